/** Prints what each example's reads return, and how long they took. */

import { setTimeout as sleep } from "node:timers/promises";

import { Item, type Job } from "../src";

/** Runs one read and prints its result and its duration. */
export async function show<T>(what: string, read: () => Promise<T>): Promise<T> {
  const started = performance.now();
  const result = await read();
  const took = ((performance.now() - started) / 1000).toFixed(2);
  if (result instanceof Item) {
    console.log(`${what.padEnd(44)} ${result.state.padEnd(5)} ${JSON.stringify(result.data)} (${took}s)`);
  } else {
    console.log(`${what.padEnd(44)} ${JSON.stringify(result)} (${took}s)`);
  }
  return result;
}

/** Reads (starting nothing) until the background refresh has landed: the item is FRESH again. */
export async function waitForRefresh<A extends unknown[], T>(job: Job<A, T>, ...args: A): Promise<Item<T>> {
  const deadline = Date.now() + 30_000;
  for (;;) {
    const item = await job.rawGet(...args);
    if (item.state === "FRESH" || Date.now() > deadline) return item;
    await sleep(50);
  }
}

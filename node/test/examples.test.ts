/** The seed's examples (examples/*.ts) run against a real daemon and print their timeline. */

import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { join } from "node:path";
import { afterEach, beforeEach, test } from "node:test";
import { promisify } from "node:util";

import { Fixture, WAIT } from "./harness";

const run = promisify(execFile);

let fx: Fixture;
beforeEach(async () => {
  fx = await Fixture.start();
});
afterEach(async () => {
  await fx.close();
});

/** Runs an example; its printed lines, spacing collapsed and timings cut off. */
async function example(name: string): Promise<string[]> {
  const { stdout } = await run(process.execPath, [join(__dirname, "..", "examples", `${name}.js`)], {
    env: { ...process.env, CACHEBACKD_URL: fx.daemon.url, FAKE_TWITTER_DELAY: "0.2" },
    timeout: WAIT * 4000,
  });
  return stdout
    .trim()
    .split("\n")
    .map((line) => line.split(/\s+/).join(" ").replace(/ \(\d+\.\d+s\)$/, ""));
}

const tweets = (user: string, n: number) => `["@${user} tweet ${n}.2","@${user} tweet ${n}.1"]`;

/** A read right after an invalidation: the stale data, unless the refresh has landed. */
const staleOrRefreshed = (what: string, user: string) => [
  `${what} STALE ${tweets(user, 1)}`,
  `${what} FRESH ${tweets(user, 2)}`,
];

test("the cached function example", async () => {
  const lines = await example("decorated");
  assert.ok(staleOrRefreshed("invalidated: stale data at once", "bob").includes(lines[2]!), lines[2]);
  assert.deepEqual(lines, [
    `miss: waits for one fetch ${tweets("bob", 1)}`,
    `hit: cached, at once ${tweets("bob", 1)}`,
    lines[2],
    `the background refresh landed FRESH ${tweets("bob", 2)}`,
    `deleted: the next call fetches again ${tweets("bob", 3)}`,
  ]);
});

test("the fetchOnMiss false example", async () => {
  assert.deepEqual(await example("no_fetch_on_miss"), [
    "miss: null at once, fetched in background null",
    `the background fetch landed FRESH ${tweets("alice", 1)}`,
    `hit: cached, at once FRESH ${tweets("alice", 1)}`,
    "fresh for 1200s",
  ]);
});

test("the Job subclass example", async () => {
  const lines = await example("user_tweets");
  assert.ok(staleOrRefreshed("bob, invalidated: stale at once", "bob").includes(lines[6]!), lines[6]);
  assert.deepEqual(lines, [
    "bob, a miss: null at once null",
    `someone-important, a miss: waits ${tweets("someone-important", 1)}`,
    `bob, once fetched in background FRESH ${tweets("bob", 1)}`,
    `someone-important, a hit FRESH ${tweets("someone-important", 1)}`,
    "bob stays fresh for 600s",
    "someone-important stays fresh for 60s",
    lines[6],
    `bob, refreshed in background FRESH ${tweets("bob", 2)}`,
  ]);
});

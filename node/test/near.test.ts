/** The Node client's near cache (`new Client(url, { nearCache: N })`) against the real
 * daemon: a local hit never reaches it (the daemon's own Get counter says so), a write by
 * another client ends the local copy (a Set, Invalidate, Delete, InvalidateJob, and a Set
 * by the Rust `cachebackd ctl`), so do its expiry and the loss of the stream, and the
 * bound holds. */

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { afterEach, beforeEach, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";

import * as grpc from "@grpc/grpc-js";

import { Client, Job, Worker, type NearCacheStats } from "../src";
import { cachebackV1 } from "../src/proto";
import { Daemon, WAIT, daemonBin, eventually, freePort, quietLogger } from "./harness";

const JOB = "test.Near";
const ARGS = Buffer.from('["bob"]');

class Near extends Job<[string], string> {
  name = JOB;

  async fetch(user: string): Promise<string> {
    return `${user} fetched`;
  }
}

let daemon: Daemon;
let metrics: string;
let writer: Client;
let near: Client;
let worker: Worker;
let extra: Client[] = [];

beforeEach(async () => {
  metrics = `127.0.0.1:${await freePort()}`;
  daemon = await Daemon.start({ args: ["--metrics-listen", metrics] });
  writer = new Client(daemon.url, { timeout: WAIT });
  near = new Client(daemon.url, { timeout: WAIT, nearCache: 100 });
  await near.waitForReady(WAIT);
  worker = new Worker({ client: writer, logger: quietLogger() }).serve(new Near()).start();
  await worker.ready({ timeout: WAIT });
});

afterEach(async () => {
  await worker.stop();
  for (const c of [writer, near, ...extra]) c.close();
  extra = [];
  await daemon.close();
});

async function scrape(): Promise<Map<string, number>> {
  const text = await (await fetch(`http://${metrics}/metrics`)).text();
  const samples = new Map<string, number>();
  for (const line of text.split("\n")) {
    if (line === "" || line.startsWith("#")) continue;
    const at = line.lastIndexOf(" ");
    samples.set(line.slice(0, at), Number(line.slice(at + 1)));
  }
  return samples;
}

/** Every Get the daemon has answered for the job. */
async function daemonGets(): Promise<number> {
  const s = await scrape();
  return ["fresh", "stale", "miss"].reduce((sum, o) => sum + (s.get(`cachebackd_gets_total{job="${JOB}",outcome="${o}"}`) ?? 0), 0);
}

/** The daemon has applied the stream's adds (they travel on their own stream). */
async function awaitSubscribed(n: number): Promise<void> {
  await eventually(async () => ((await scrape()).get("cachebackd_subscribed_items") === n ? true : undefined), `${n} subscribed items`);
}

function stats(c: Client): NearCacheStats {
  const s = c.nearCacheStats();
  assert.ok(s !== undefined, "a near cache");
  return s;
}

async function awaitHeld(c: Client, n: number): Promise<void> {
  await eventually(async () => (stats(c).items === n ? true : undefined), `${n} items held`);
}

test("a near-cache hit does not reach the daemon", async () => {
  const first = await near.get(JOB, ARGS);
  assert.deepEqual([first.state, first.fetched, first.data?.toString()], ["FRESH", true, '"bob fetched"']);
  assert.equal(await daemonGets(), 1);
  for (let i = 0; i < 10; i++) {
    const item = await near.get(JOB, ARGS);
    assert.deepEqual(
      [item.state, item.data?.toString(), item.expiresAt?.getTime(), item.fetched],
      ["FRESH", '"bob fetched"', first.expiresAt?.getTime(), false],
    );
  }
  assert.equal(await daemonGets(), 1, "no hit reached the daemon");
  assert.deepEqual(stats(near), { hits: 10, misses: 1, items: 1, resets: 0 });
  assert.equal(writer.nearCacheStats(), undefined);
  // A maxAge read always asks the daemon (a peek too, which the daemon does not count).
  await near.get(JOB, ARGS, { maxAge: 60 });
  assert.equal(await daemonGets(), 2);
  assert.equal(stats(near).hits, 10);
});

for (const write of ["set", "invalidate", "delete", "invalidateJob", "rust ctl set"] as const) {
  test(`a ${write} by another client ends the local copy`, async () => {
    await writer.set(JOB, ARGS, Buffer.from('"before"'));
    assert.equal((await near.get(JOB, ARGS)).data?.toString(), '"before"');
    await awaitSubscribed(1);
    assert.equal((await near.get(JOB, ARGS)).data?.toString(), '"before"');
    const before = stats(near);
    assert.equal(before.hits, 1);
    if (write === "set") await writer.set(JOB, ARGS, Buffer.from('"after"'));
    else if (write === "invalidate") await writer.invalidate(JOB, ARGS);
    else if (write === "delete") assert.equal(await writer.delete(JOB, ARGS), true);
    else if (write === "invalidateJob") {
      const Admin = cachebackV1().CachebackAdmin;
      const admin = new Admin(daemon.listen, grpc.credentials.createInsecure());
      await new Promise<void>((ok, fail) => admin.InvalidateJob({ job: JOB }, (e) => (e ? fail(e) : ok())));
      admin.close();
    } else {
      execFileSync(daemonBin(), ["ctl", "--addr", daemon.listen, "set", JOB, '["bob"]', '"rust"'], { timeout: WAIT * 1000 });
    }
    await awaitHeld(near, 0);
    const after = await near.get(JOB, ARGS);
    assert.equal(stats(near).misses, before.misses + 1);
    assert.equal(stats(near).hits, before.hits);
    if (write === "set") assert.equal(after.data?.toString(), '"after"');
    else if (write === "rust ctl set") assert.equal(after.data?.toString(), '"rust"');
    else if (write === "delete") assert.equal(after.fetched, true);
    // Stale (refreshing) or already refreshed: never the local copy.
    else assert.ok(after.state === "STALE" || after.data?.toString() === '"bob fetched"', after.state);
  });
}

test("this client's own write ends its copy at once", async () => {
  await near.get(JOB, ARGS);
  await near.set(JOB, ARGS, Buffer.from('"mine"'));
  assert.equal((await near.get(JOB, ARGS)).data?.toString(), '"mine"');
});

test("expiry ends the local copy", async () => {
  const expires = await writer.set(JOB, ARGS, Buffer.from('"short"'), { lifetime: 1 });
  assert.equal((await near.get(JOB, ARGS)).state, "FRESH");
  assert.equal((await near.get(JOB, ARGS)).state, "FRESH");
  assert.equal(stats(near).hits, 1);
  const gets = await daemonGets();
  // Time passing is the point: wait for the wall clock to pass the item's expiry.
  await sleep(Math.max(0, expires.getTime() - Date.now()) + 20);
  const item = await near.get(JOB, ARGS);
  assert.equal(item.state, "STALE");
  assert.equal(await daemonGets(), gets + 1);
  assert.equal(stats(near).hits, 1);
});

test("a killed daemon drops everything", async () => {
  for (const user of ["ann", "bob", "cy"]) await near.get(JOB, Buffer.from(`["${user}"]`));
  await awaitHeld(near, 3);
  await worker.stop();
  await daemon.kill();
  await awaitHeld(near, 0);
  assert.equal(stats(near).resets, 1);
  await daemon.startAgain();
  worker = new Worker({ client: writer, logger: quietLogger() }).serve(new Near()).start();
  await worker.ready({ timeout: WAIT });
  await near.waitForReady(WAIT);
  const hits = stats(near).hits;
  const again = await near.get(JOB, ARGS);
  assert.equal(again.state, "FRESH");
  assert.equal(stats(near).hits, hits, "nothing held from before the loss was served");
});

test("the bound holds", async () => {
  const small = new Client(daemon.url, { timeout: WAIT, nearCache: 5 });
  extra.push(small);
  await small.waitForReady(WAIT);
  for (let i = 0; i < 200; i++) {
    const args = Buffer.from(`["user${i}"]`);
    await writer.set(JOB, args, Buffer.from("1"));
    assert.equal((await small.get(JOB, args)).data?.toString(), "1");
  }
  const s = stats(small);
  assert.ok(s.items <= 5, `${s.items} items held`);
  assert.equal(s.misses, 200);
  assert.ok(((await scrape()).get("cachebackd_subscribed_items") ?? 0) <= 5 + 64 + 1);
});

/** The protocol's additions from Node, through the real daemon: absences (`Absent`),
 * conditional refresh (`fetchContext().validator`, `NotModified`), tags and
 * `invalidateTags`, `maxAge` and `peek` on reads, the new job settings, and `fetchMany`
 * for batches (the Node twin of python/tests/test_additions.py). */

import assert from "node:assert/strict";
import { setTimeout as sleep } from "node:timers/promises";
import { afterEach, beforeEach, test } from "node:test";

import { Absent, CachebackError, FetchFailed, Fetched, Job, NotModified, Worker, cacheback, encodeArgs, fetchContext } from "../src";
import type { FetchContext } from "../src";
import { Fixture, WAIT, eventually, quietLogger } from "./harness";

/** 0 is nobody; every user is at version "v1"; tagged by user; 13 fails. */
class Users extends Job<[number], string> {
  name = "tests.additions.Users";
  refreshTimeout = WAIT;
  absentLifetime = 60;
  errorTtl = 60;
  maxBatch = 16;
  contexts: FetchContext[] = [];
  batches: number[] = [];

  async fetch(userId: number): Promise<string | Fetched<string>> {
    await Promise.resolve(); // the context follows awaits
    this.contexts.push(fetchContext());
    if (userId === 0) throw new Absent();
    if (userId === 13) throw new Error("user 13 is cursed");
    if (fetchContext().validator?.toString() === "v1") throw new NotModified();
    return new Fetched(`user ${userId}`, { validator: "v1" });
  }

  override async fetchMany(argLists: readonly [number][]): Promise<string[]> {
    this.batches.push(argLists.length);
    return argLists.map(([userId]) => `batched ${userId}`);
  }

  override tags(userId: number): string[] {
    return [`user:${userId}`, "users"];
  }
}

let fx: Fixture;
beforeEach(async () => {
  fx = await Fixture.start();
});
afterEach(async () => {
  await fx.close();
});

test("an absence is cached and read as null", async () => {
  const job = new Users(fx.client);
  await fx.worker([job]);
  assert.equal(await job.get(0), null);
  const item = await job.getItem(0);
  assert.deepEqual([item.state, item.absent, item.data, item.fetched], ["FRESH", true, null, false]);
  assert.deepEqual(item.tags, ["user:0", "users"]);
  assert.equal(item.expiresAt!.getTime() - item.storedAt!.getTime(), 60_000);
  assert.equal(job.contexts.length, 1, "the absence was cached: no second fetch");
});

test("a refresh sees the validator, and NotModified keeps the data", async () => {
  const job = new Users(fx.client);
  await fx.worker([job]);
  const first = await job.getItem(7);
  assert.equal(first.data, "user 7");
  assert.equal((await job.invalidate(7)).refreshScheduled, true);
  const item = await eventually(async () => {
    const i = await job.getItem(7);
    return i.state === "FRESH" ? i : undefined;
  }, "the refresh");
  assert.equal(item.data, "user 7");
  assert.ok(item.storedAt! > first.storedAt!, "NotModified stores the confirmation time");
  assert.deepEqual(
    job.contexts.map((c) => [c.reason, c.validator?.toString() ?? null]),
    [
      ["MISS", null],
      ["INVALIDATED", "v1"],
    ],
  );
});

test("tags: set stores them, invalidateTags marks stale; peek starts nothing; maxAge fetches synchronously", async () => {
  const job = new Users(fx.client);
  await fx.worker([job]);
  await job.set(5, "set by hand");
  assert.deepEqual((await job.with({ peek: true }).getItem(5)).tags, ["user:5", "users"]);
  const missing = await job.with({ peek: true }).getItem(6);
  assert.deepEqual([missing.state, missing.fetched, missing.refreshScheduled], ["MISS", false, false]);
  await fx.client.invalidateTags(["user:5"]);
  const peeked = await job.rawGet(5);
  assert.deepEqual([peeked.state, peeked.data, peeked.refreshScheduled], ["STALE", "set by hand", false]);
  assert.equal(job.contexts.length, 0, "peeks started no fetch");
  const read = await job.getItem(5);
  assert.deepEqual([read.state, read.data, read.refreshScheduled], ["STALE", "set by hand", true]);
  const refreshed = await eventually(async () => {
    const i = await job.rawGet(5);
    return i.state === "FRESH" ? i : undefined;
  }, "the refresh of a tag-invalidated item");
  assert.equal(refreshed.data, "user 5");
  assert.equal(job.contexts[0].reason, "STALE");

  await job.set(8, "old");
  const storedAt = (await job.rawGet(8)).storedAt!.getTime();
  await sleep(Math.max(storedAt + 300 - Date.now(), 0)); // the item must be older than maxAge below: time is the point
  assert.equal(await job.with({ maxAge: 60 }).get(8), "old");
  const fetched = await job.with({ maxAge: 0.2 }).getItem(8);
  assert.deepEqual([fetched.state, fetched.data, fetched.fetched], ["FRESH", "user 8", true]);
});

test("errorTtl spares the origin", async () => {
  const job = new Users(fx.client);
  await fx.worker([job]);
  for (let i = 0; i < 3; i++) {
    await assert.rejects(job.get(13), (e: unknown) => e instanceof FetchFailed && /user 13 is cursed/.test(e.message));
  }
  assert.equal(job.contexts.length, 1, "errorTtl: the origin was asked once");
});

test("a batch reaches one fetchMany", async () => {
  const job = new Users(fx.client);
  const first = await fx.worker([job]);
  await first.stop();
  const ids = Array.from({ length: 20 }, (_, i) => 100 + i);
  for (const id of ids) {
    assert.equal((await fx.client.get(job.name, encodeArgs([id]), { fetchOnMiss: false })).state, "MISS");
  }
  await fx.worker([job], { maxInFlight: 32 });
  for (const id of ids) {
    const item = await eventually(async () => {
      const i = await job.rawGet(id);
      return i.hit ? i : undefined;
    }, `item ${id}`);
    assert.equal(item.data, `batched ${id}`);
  }
  assert.deepEqual(job.batches, [16, 4]);
});

test("the new settings are registered, and bad ones refused", async () => {
  const hot = cacheback(
    { name: "tests.additions.hot", earlyRefreshBeta: 1.5, absentLifetime: 5, errorTtl: 2 },
    function hot() {
      return 1;
    },
  );
  const worker = await fx.worker([hot.job]);
  const config = worker.effectiveConfig("tests.additions.hot")!;
  assert.equal(config.earlyRefreshBeta, 1.5);
  assert.deepEqual([config.absentLifetime?.seconds, config.errorTtl?.seconds], [5, 2]);

  const bad = cacheback({ name: "tests.additions.bad", earlyRefreshBeta: Number.NaN }, () => 1);
  assert.throws(() => new Worker({ client: fx.client, logger: quietLogger() }).serve(bad), /earlyRefreshBeta/);
  await assert.rejects(fx.client.invalidateTags([]), (e: unknown) => e instanceof CachebackError && /1 to 100/.test(e.message));
});

test("a bad tag or an oversized validator fails that fetch with the daemon's message; the worker serves on", async () => {
  const job = cacheback({ name: "tests.additions.badOutcome", client: fx.client }, function badOutcome(kind: string) {
    if (kind === "tag") return new Fetched("x", { tags: ["not a tag!"] });
    if (kind === "validator") return new Fetched("x", { validator: Buffer.alloc(257) });
    return new Fetched(kind, { tags: ["fine"] });
  });
  await fx.worker([job.job]);
  await assert.rejects(job("tag"), (e: unknown) => e instanceof FetchFailed && /tag "not a tag!" has the character/.test(e.message));
  await assert.rejects(job("validator"), (e: unknown) => e instanceof FetchFailed && /validator is 257 bytes, over the limit of 256 bytes/.test(e.message));
  assert.equal((await job.job.with({ peek: true }).getItem("tag")).state, "MISS", "nothing stored");
  const good = await job.job.getItem("good");
  assert.deepEqual([good.data, good.tags], ["good", ["fine"]]);
});

/**
 * Interop with the Rust client, through the real binaries: items fetched by a Rust worker
 * are read by Node under the same key, and a Node worker serves the Rust client's reader.
 *
 * The Rust side is the Rust client's own examples: `user_tweets` (the seed's UserTweets,
 * job `examples.UserTweets`) runs its worker and its timeline against the test daemon and
 * leaves its items behind; `read_tweets` reads that job and registers no worker. The
 * Python suite (python/tests/test_interop_node.py) does the same between Node and Python.
 */

import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { join } from "node:path";
import { afterEach, beforeEach, test } from "node:test";
import { promisify } from "node:util";

import { Job } from "../src";
import { Fixture, WAIT, rustExamples } from "./harness";

const run = promisify(execFile);

/** The Node view of the examples' job. */
class UserTweets extends Job<[string], string[]> {
  name = "examples.UserTweets";
  lifetime = 600;
  calls: string[] = [];

  fetch(username: string): string[] {
    this.calls.push(username);
    return [`@${username}: from the Node worker`];
  }
}

let fx: Fixture;
beforeEach(async () => {
  fx = await Fixture.start();
});
afterEach(async () => {
  await fx.close();
});

const env = () => ({ ...process.env, CACHEBACKD_URL: fx.daemon.url });

test("items fetched by the Rust worker are read by Node", async () => {
  await run(join(rustExamples(), "user_tweets"), [], { env: env(), timeout: WAIT * 4000 });
  const tweets = new UserTweets(fx.client); // no worker now: these are the Rust worker's items
  const bob = await tweets.getItem("bob");
  assert.deepEqual([bob.state, bob.fetched], ["FRESH", false]);
  assert.equal(bob.data?.length, 1);
  assert.match(bob.data![0]!, /^@bob: tweet fetched by API call #\d+$/);
  assert.equal(bob.expiresAt!.getTime() - bob.storedAt!.getTime(), 600_000);
  // celeb_ada's Rust expiry() gave it 3 s: fresh or stale by now, the Rust worker's data either way.
  const celeb = await tweets.rawGet("celeb_ada");
  assert.ok(celeb.state === "FRESH" || celeb.state === "STALE", celeb.state);
  assert.match(celeb.data![0]!, /^@celeb_ada: tweet fetched by API call #\d+$/);
  assert.equal(celeb.expiresAt!.getTime() - celeb.storedAt!.getTime(), 3000);
  assert.deepEqual(tweets.calls, []);
});

test("a Node worker serves a Rust reader", async () => {
  const tweets = new UserTweets(fx.client);
  await fx.worker([tweets]);
  const read = async (...usernames: string[]) => {
    const { stdout } = await run(join(rustExamples(), "read_tweets"), usernames, { env: env(), timeout: WAIT * 4000 });
    return stdout.trim().split("\n").map((line) => JSON.parse(line) as unknown);
  };
  assert.deepEqual(await read("bob", "café", "😀 {\"k\"}"), [
    { username: "bob", state: "FRESH", fetched: true, data: ["@bob: from the Node worker"] },
    { username: "café", state: "FRESH", fetched: true, data: ["@café: from the Node worker"] },
    { username: '😀 {"k"}', state: "FRESH", fetched: true, data: ['@😀 {"k"}: from the Node worker'] },
  ]);
  assert.deepEqual(tweets.calls, ["bob", "café", '😀 {"k"}']);
  // Again: a cache hit, under the key the Node client uses too.
  assert.deepEqual(await read("café"), [
    { username: "café", state: "FRESH", fetched: false, data: ["@café: from the Node worker"] },
  ]);
  const mine = await tweets.getItem("café");
  assert.deepEqual([mine.state, mine.fetched, mine.data], ["FRESH", false, ["@café: from the Node worker"]]);
  assert.equal(tweets.calls.length, 3);
});

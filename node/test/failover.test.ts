/** Several daemon URLs (issue 13, the clients' side) against two real cachebackd processes
 * on sled, each with its own data dir: a client uses one and moves to the other when it is
 * SIGKILLed, a worker registers with both and serves fetches on both, a status the daemon
 * answers never moves the client, and with every daemon down the error names each URL. */

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { connect } from "node:net";
import { afterEach, test } from "node:test";

import { Client, FetchFailed, Job, NoDaemonError, Worker } from "../src";
import { Daemon, WAIT, eventually, freePort, quietLogger } from "./harness";

/** Answers `<user> #<n>` for its n-th fetch (shared by every daemon's stream). */
class Tweets extends Job<[string], string[]> {
  name = "test.Tweets";
  calls: string[] = [];

  async fetch(username: string): Promise<string[]> {
    this.calls.push(username);
    return [`${username} #${this.calls.length}`];
  }
}

let cleanup: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const step of cleanup.reverse()) await step();
  cleanup = [];
});

async function twoDaemons(): Promise<[Daemon, Daemon]> {
  const a = await Daemon.start();
  const b = await Daemon.start();
  cleanup.push(() => a.close(), () => b.close());
  return [a, b];
}

function client(urls: string | string[], options: { nearCache?: number } = {}): Client {
  const c = new Client(urls, { timeout: WAIT, ...options });
  cleanup.push(() => c.close());
  return c;
}

async function started(on: Client, ...jobs: Job<any, any>[]): Promise<Worker> {
  const worker = new Worker({ client: on, logger: quietLogger(), reconnectInitial: 0.02, reconnectMax: 0.5 });
  for (const job of jobs) worker.serve(job);
  worker.start();
  cleanup.push(() => worker.stop());
  await worker.ready({ timeout: WAIT });
  return worker;
}

/** The daemon `c` uses now, and the other one. */
function inUse(c: Client, a: Daemon, b: Daemon): [Daemon, Daemon] {
  if (c.target === a.listen) return [a, b];
  assert.equal(c.target, b.listen);
  return [b, a];
}

test("a client of two daemons fails over when its daemon is killed", async () => {
  const [a, b] = await twoDaemons();
  const fleet = client([a.url, b.url]);
  assert.deepEqual(fleet.targets, [a.listen, b.listen]);
  const tweets = new Tweets(fleet);
  const worker = await started(fleet, tweets);
  assert.equal(worker.registrations, 2, "one registration per daemon");
  assert.deepEqual(await tweets.get("bob"), ["bob #1"]);
  assert.deepEqual(await tweets.get("bob"), ["bob #1"]);

  const [used, other] = inUse(fleet, a, b);
  await used.kill();
  // The next call goes to the other daemon (its own store: bob is fetched anew).
  const item = await tweets.getItem("bob");
  assert.equal(fleet.target, other.listen);
  assert.deepEqual([item.data, item.fetched], [["bob #2"], true]);
  // Every reader call works there, and the client stays.
  await tweets.set("bob", ["set"]);
  assert.deepEqual(await tweets.get("bob"), ["set"]);
  assert.deepEqual(await tweets.getMany([["ann"]]), [["ann #3"]]);
  await fleet.invalidateTags(["user:bob"]);
  assert.equal(tweets.calls.length, 3);
  assert.equal((await tweets.invalidate("bob")).found, true);
  assert.equal(await tweets.delete("bob"), true);
  assert.equal(fleet.target, other.listen);
});

test("a worker of two daemons serves fetches on both and reconnects each", async () => {
  const [a, b] = await twoDaemons();
  const tweets = new Tweets(client(`${a.url},${b.url}`));
  const worker = await started(tweets.client, tweets);
  assert.equal(worker.registrations, 2);
  const onA = new Tweets(client(a.url));
  const onB = new Tweets(client(b.url));
  assert.deepEqual(await onA.get("ann"), ["ann #1"]);
  assert.deepEqual(await onB.get("bob"), ["bob #2"]);

  // A restarts: the worker registers with it again; its stream to B is untouched.
  await a.kill();
  assert.deepEqual(await onB.get("cat"), ["cat #3"]);
  await a.startAgain();
  await worker.ready({ timeout: WAIT, count: 3 });
  assert.deepEqual(await onA.get("dan"), ["dan #4"]);
  assert.equal(worker.registrations, 3, "B's stream never dropped");
  assert.deepEqual(tweets.calls, ["ann", "bob", "cat", "dan"]);
});

class Failing extends Job<[string], string> {
  name = "test.Failing";

  async fetch(): Promise<string> {
    throw new Error("the API said no");
  }
}

test("an UNAVAILABLE the daemon answers does not move the client", async () => {
  const [a, b] = await twoDaemons();
  const fleet = client([a.url, b.url]);
  await started(fleet, new Failing());
  const before = fleet.target;
  const error = await new Failing(fleet).get("bob").then(
    () => assert.fail("expected the fetch to fail"),
    (e: unknown) => e,
  );
  assert.ok(error instanceof FetchFailed, String(error));
  assert.match(error.details, /the API said no/);
  assert.equal(fleet.target, before);
});

test("with every daemon down the error names each URL tried", async () => {
  const nowhere = [`http://127.0.0.1:${await freePort()}`, `http://127.0.0.1:${await freePort()}`];
  const refused = await client(nowhere).get("test.Tweets", Buffer.from('["bob"]')).then(
    () => assert.fail("expected the call to fail"),
    (e: unknown) => e,
  );
  assert.ok(refused instanceof NoDaemonError, String(refused));
  assert.deepEqual([...refused.tried].sort(), [...nowhere].sort());
  assert.equal(refused.codeName, "UNAVAILABLE");
  for (const url of nowhere) assert.ok(refused.message.includes(url), refused.message);

  const [a, b] = await twoDaemons();
  const fleet = client([a.url, b.url]);
  await fleet.waitForReady(WAIT);
  await a.kill();
  await b.kill();
  const failed = await new Tweets(fleet).get("bob").then(
    () => assert.fail("expected the call to fail"),
    (e: unknown) => e,
  );
  assert.ok(failed instanceof NoDaemonError, String(failed));
  assert.equal(failed.rpc, "Get");
  assert.deepEqual([...failed.tried].sort(), [a.url, b.url].sort());
});

test("the near cache drops everything when its daemon is killed and serves from the next", async () => {
  const [a, b] = await twoDaemons();
  const tweets = new Tweets(client([a.url, b.url]));
  await started(tweets.client, tweets);
  const near = client([a.url, b.url], { nearCache: 100 });
  await near.waitForReady(WAIT);
  const reader = new Tweets(near);
  await reader.get("bob");
  assert.deepEqual(await reader.get("bob"), ["bob #1"]);
  const stats = near.nearCacheStats()!;
  assert.deepEqual([stats.hits, stats.items], [1, 1]);

  const [used, other] = inUse(near, a, b);
  await used.kill();
  // The stream breaks: everything goes without a read, and the client moves on.
  await eventually(async () => {
    const s = near.nearCacheStats()!;
    return s.items === 0 && s.resets === 1 ? s : undefined;
  }, "the near cache to drop everything");
  const item = await reader.getItem("bob");
  assert.equal(near.target, other.listen);
  assert.deepEqual([item.data, item.fetched], [["bob #2"], true]);
  // On the new daemon, once its stream is up, a read is kept and then served locally.
  await eventually(async () => {
    await reader.get("bob");
    return near.nearCacheStats()!.items === 1 ? true : undefined;
  }, "a read kept on the new daemon");
  const hits = near.nearCacheStats()!.hits;
  assert.deepEqual(await reader.get("bob"), ["bob #2"]);
  assert.equal(near.nearCacheStats()!.hits, hits + 1);
  assert.deepEqual(tweets.calls, ["bob", "bob"]);
});

/** A redis-server on a free loopback port, without persistence, killed by pid at the end. */
async function redis(): Promise<string> {
  const port = await freePort();
  const proc = spawn("redis-server", ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], {
    stdio: "ignore",
  });
  cleanup.push(() => void proc.kill("SIGKILL"));
  await eventually(
    () =>
      new Promise<true | undefined>((resolve) => {
        const socket = connect(port, "127.0.0.1", () => {
          socket.end();
          resolve(true);
        });
        socket.on("error", () => resolve(undefined));
      }),
    "redis-server to listen",
  );
  return `redis://127.0.0.1:${port}`;
}

test("in a fleet a failed-over client reads what it wrote through the dead daemon", async () => {
  const store = await redis();
  const a = await Daemon.start({ args: ["--store", store] });
  const b = await Daemon.start({ args: ["--store", store] });
  cleanup.push(() => a.close(), () => b.close());
  const fleet = client([a.url, b.url]);
  const tweets = new Tweets(fleet);
  await started(fleet, tweets);
  assert.deepEqual(await tweets.get("bob"), ["bob #1"]);
  await tweets.set("ann", ["written"]);

  const [used, other] = inUse(fleet, a, b);
  await used.kill();
  // The other daemon serves the same store: both are FRESH hits, nothing fetched.
  const item = await tweets.getItem("bob");
  assert.equal(fleet.target, other.listen);
  assert.deepEqual([item.state, item.fetched, item.data], ["FRESH", false, ["bob #1"]]);
  assert.deepEqual(await tweets.get("ann"), ["written"]);
  // A miss is fetched through the worker's stream to the daemon still up.
  assert.deepEqual(await tweets.get("cat"), ["cat #2"]);
  assert.deepEqual(tweets.calls, ["bob", "cat"]);
});

/** Jobs, cacheback() functions and the Client, through the real daemon. */

import assert from "node:assert/strict";
import { afterEach, beforeEach, describe, test } from "node:test";

import * as grpc from "@grpc/grpc-js";

import { CachebackError, Client, FetchFailed, Job, isLocal, TOKEN_ENV, URL_ENV, Worker, cacheback, defaultClient, setDefaultClient } from "../src";
import { Fixture, eventually, signal } from "./harness";

/** A job that counts its fetches and answers `<user> #<n>`. */
class Tweets extends Job<[string], string[]> {
  name = "test.Tweets";
  calls: string[] = [];

  async fetch(username: string): Promise<string[]> {
    this.calls.push(username);
    if (username === "broken") throw new Error(`no such user ${username}`);
    return [`${username} #${this.calls.length}`];
  }
}

/** The seed's UserTweets: fetchOnMiss off, except for celebrities, whose items live 3 s. */
class UserTweets extends Tweets {
  name = "test.UserTweets";
  lifetime = 600;
  fetchOnMiss = false;

  expiry(username: string): Date | number {
    return username.startsWith("celeb_") ? Date.now() / 1000 + 3 : super.expiry(username);
  }

  shouldMissingItemBeFetchedSynchronously(username: string): boolean {
    return username.startsWith("celeb_");
  }
}

let fx: Fixture;
beforeEach(async () => {
  fx = await Fixture.start();
});
afterEach(async () => {
  await fx.close();
});

const code = async (promise: Promise<unknown>): Promise<[string, string]> => {
  const error = await promise.then(
    () => assert.fail("expected the call to fail"),
    (e: unknown) => e,
  );
  assert.ok(error instanceof CachebackError, String(error));
  return [error.codeName, error.details];
};

describe("reads through a job", () => {
  test("a miss waits for the one fetch, then the item is a fresh hit", async () => {
    const job = new Tweets(fx.client);
    await fx.worker([job]);
    const first = await job.getItem("bob");
    assert.deepEqual([first.state, first.fetched, first.data], ["FRESH", true, ["bob #1"]]);
    const again = await job.getItem("bob");
    assert.deepEqual([again.state, again.fetched, again.data], ["FRESH", false, ["bob #1"]]);
    assert.equal(again.expiresAt!.getTime() - again.storedAt!.getTime(), 600_000);
    assert.deepEqual(job.calls, ["bob"]);
    assert.deepEqual(await job.get("bob"), ["bob #1"]);
  });

  test("rawGet reads what is stored and starts nothing", async () => {
    const job = new Tweets(fx.client);
    await fx.worker([job]);
    const miss = await job.rawGet("bob"); // a get would wait for a fetch here
    assert.deepEqual([miss.state, miss.data, miss.refreshScheduled, miss.fetched], ["MISS", null, false, false]);
    await job.setWithLifetime(["bob"], ["set"], 0);
    const stale = await job.rawGet("bob");
    assert.deepEqual([stale.state, stale.data, stale.refreshScheduled], ["STALE", ["set"], false]);
    assert.deepEqual(job.calls, []);
    assert.equal((await job.getItem("bob")).refreshScheduled, true);
  });

  test("the registered config is the job's fields", async () => {
    const job = new UserTweets(fx.client);
    const worker = await fx.worker([job]);
    const config = worker.effectiveConfig("test.UserTweets")!;
    assert.deepEqual(
      [config.lifetime?.seconds, config.refreshTimeout?.seconds, config.fetchOnMiss, config.cacheTtl?.seconds],
      [600, 60, false, 30 * 24 * 3600],
    );
    assert.equal(config.fetchOnStaleThreshold ?? null, null);
  });

  test("fetchOnMiss false: a miss is null at once and fills in the background", async () => {
    const job = new UserTweets(fx.client);
    await fx.worker([job]);
    const miss = await job.getItem("bob");
    assert.deepEqual([miss.state, miss.data, miss.refreshScheduled, miss.storedAt], ["MISS", null, true, null]);
    const filled = await eventually(async () => {
      const item = await job.getItem("bob");
      return item.hit ? item : undefined;
    }, "the background fetch");
    assert.deepEqual([filled.state, filled.data], ["FRESH", ["bob #1"]]);
    assert.deepEqual(job.calls, ["bob"]);
  });

  test("shouldMissingItemBeFetchedSynchronously and expiry travel with the read and the answer", async () => {
    const job = new UserTweets(fx.client);
    await fx.worker([job]);
    const celeb = await job.getItem("celeb_ada");
    assert.deepEqual([celeb.state, celeb.fetched, celeb.data], ["FRESH", true, ["celeb_ada #1"]]);
    const lifetime = (celeb.expiresAt!.getTime() - celeb.storedAt!.getTime()) / 1000;
    assert.ok(lifetime > 2 && lifetime <= 3, `celeb_ada lives ${lifetime}s, from expiry()`);
  });

  test("a thrown fetch is a failed fetch with its message, and the worker serves on", async () => {
    const job = new Tweets(fx.client);
    await fx.worker([job]);
    assert.deepEqual(await code(job.get("broken")), ["UNAVAILABLE", "Error: no such user broken"]);
    await assert.rejects(job.get("broken"), FetchFailed);
    assert.deepEqual(await job.get("bob"), ["bob #3"]);
  });

  test("getMany answers each item in order, a failed one as its error", async () => {
    const job = new Tweets(fx.client);
    await fx.worker([job]);
    await job.set("alice", ["alice, set"]);
    const items = await job.getManyItems([["alice"], ["broken"], ["bob"]]);
    assert.equal(items.length, 3);
    const [alice, broken, bob] = items;
    assert.ok(!(alice instanceof CachebackError) && !(bob instanceof CachebackError));
    assert.deepEqual([alice.state, alice.fetched, alice.data], ["FRESH", false, ["alice, set"]]);
    assert.deepEqual([bob.state, bob.fetched, bob.data?.[0]?.startsWith("bob #")], ["FRESH", true, true]);
    assert.ok(broken instanceof FetchFailed);
    assert.deepEqual([broken.codeName, broken.details], ["UNAVAILABLE", "Error: no such user broken"]);
    assert.deepEqual(await code(job.getMany([["alice"], ["broken"]])), ["UNAVAILABLE", "Error: no such user broken"]);
  });
});

describe("writes through a job", () => {
  test("set stores the data with the job's lifetime or the item's own", async () => {
    const job = new Tweets(fx.client);
    await fx.worker([job]);
    const expires = await job.set("bob", ["set by hand"]);
    const item = await job.getItem("bob");
    assert.deepEqual([item.state, item.fetched, item.data], ["FRESH", false, ["set by hand"]]);
    assert.equal(item.expiresAt!.getTime(), expires.getTime());
    await job.setWithLifetime(["alice"], ["short"], 5);
    const alice = await job.getItem("alice");
    assert.equal(alice.expiresAt!.getTime() - alice.storedAt!.getTime(), 5000);
    assert.deepEqual(job.calls, []);
  });

  test("invalidate serves the stale data and refreshes it once", async () => {
    const job = new Tweets(fx.client);
    await fx.worker([job]);
    await job.get("bob");
    const refreshed = signal();
    const fetch = job.fetch.bind(job);
    job.fetch = async (username: string) => {
      const data = await fetch(username);
      refreshed.resolve();
      return data;
    };
    assert.deepEqual(await job.invalidate("bob"), { found: true, refreshScheduled: true });
    await refreshed.promise;
    const item = await eventually(async () => {
      const i = await job.getItem("bob");
      return i.data?.[0] === "bob #2" ? i : undefined;
    }, "the refresh to land");
    assert.equal(item.state, "FRESH");
    assert.deepEqual(job.calls, ["bob", "bob"]);
    assert.deepEqual(await job.invalidate("nobody"), { found: false, refreshScheduled: false });
  });

  test("delete removes the item: the next get is a miss", async () => {
    const job = new UserTweets(fx.client);
    await fx.worker([job]);
    await job.set("bob", ["kept"]);
    assert.equal(await job.delete("bob"), true);
    assert.equal(await job.delete("bob"), false);
    assert.equal((await job.getItem("bob")).state, "MISS");
  });
});

describe("cacheback() functions", () => {
  test("calling one reads through the daemon; .job invalidates and deletes", async () => {
    const calls: string[] = [];
    const fetchTweets = cacheback({ lifetime: 1200, client: fx.client }, async function fetchTweets(username: string) {
      calls.push(username);
      return [`@${username} ${calls.length}`];
    });
    assert.equal(fetchTweets.job.name, "fetchTweets");
    await fx.worker([fetchTweets.job]);
    assert.deepEqual(await fetchTweets("bob"), ["@bob 1"]);
    assert.deepEqual(await fetchTweets("bob"), ["@bob 1"]);
    const item = await fetchTweets.job.getItem("bob");
    assert.equal(item.expiresAt!.getTime() - item.storedAt!.getTime(), 1_200_000);
    assert.equal(await fetchTweets.job.delete("bob"), true);
    assert.deepEqual(await fetchTweets("bob"), ["@bob 2"]);
    assert.deepEqual(calls, ["bob", "bob"]);
  });

  test("fetchOnMiss false: a miss is null", async () => {
    const lazy = cacheback({ name: "test.lazy", fetchOnMiss: false, client: fx.client }, (n: number) => n * 2);
    await fx.worker([lazy.job]);
    assert.equal(await lazy(21), null);
    assert.equal(await eventually(() => lazy(21).then((v) => v ?? undefined), "the background fetch"), 42);
  });
});

describe("errors", () => {
  test("a job no worker ever registered is NOT_FOUND", async () => {
    const [name] = await code(new Tweets(fx.client).get("bob"));
    assert.equal(name, "NOT_FOUND");
  });

  test("args over the daemon's limit are INVALID_ARGUMENT and store nothing", async () => {
    const job = new Tweets(fx.client);
    await fx.worker([job]);
    const [name, details] = await code(job.set("x".repeat(5000), ["too big"]));
    assert.equal(name, "INVALID_ARGUMENT", details);
    assert.deepEqual(job.calls, []);
  });

  test("args a worker cannot decode and data it cannot encode are failed fetches; the worker serves on", async () => {
    const job = new Tweets(fx.client);
    const odd = cacheback({ name: "test.odd", client: fx.client }, (what: string) =>
      what === "nothing" ? undefined : Number.NaN,
    );
    await fx.worker([job, odd.job]);
    const [name, details] = await code(fx.client.get("test.Tweets", Buffer.from("not json")));
    assert.equal(name, "UNAVAILABLE");
    assert.match(details, /^SyntaxError: /);
    assert.deepEqual(await code(fx.client.get("test.Tweets", Buffer.from('{"a":1}'))), [
      "UNAVAILABLE",
      'TypeError: args must be a JSON array, got {"a":1}',
    ]);
    assert.deepEqual(await code(odd("nothing")), ["UNAVAILABLE", "TypeError: value: undefined has no JSON form"]);
    assert.deepEqual(await code(odd("nan")), ["UNAVAILABLE", "RangeError: value: NaN has no JSON form"]);
    assert.deepEqual(job.calls, []);
    assert.deepEqual(await job.get("bob"), ["bob #1"]);
  });

  test("a bad job name is refused before any call", async () => {
    assert.throws(() => cacheback({ name: "no spaces", client: fx.client }, () => 1), /invalid job name "no spaces"/);
    assert.throws(() => cacheback(() => 1), /invalid job name ""/);
    class Spaced extends Tweets {
      name = "no spaces";
    }
    await assert.rejects(new Spaced(fx.client).get("bob"), /invalid job name "no spaces"/);
    assert.throws(() => new Worker({ client: fx.client }).serve(new Spaced()), /invalid job name "no spaces"/);
  });

  test("an unreachable daemon is UNAVAILABLE, not a failed fetch", async () => {
    const nowhere = new Client("unix:/nonexistent/cachebackd.sock", { timeout: 2 });
    try {
      const refused = await nowhere.get("test.Tweets", Buffer.from("[]")).catch((e: unknown) => e);
      assert.ok(refused instanceof CachebackError && !(refused instanceof FetchFailed), String(refused));
      assert.ok(["UNAVAILABLE", "DEADLINE_EXCEEDED"].includes(refused.codeName), refused.codeName);
    } finally {
      nowhere.close();
    }
  });
});

test("a token travels as a bearer credential on every call, from the option or CACHEBACKD_TOKEN", async () => {
  const job = new Tweets(fx.client);
  await fx.worker([job]);
  const saved = process.env[TOKEN_ENV];
  process.env[TOKEN_ENV] = "from-the-environment";
  const [given, fromEnv] = [new Client(fx.daemon.url, { token: "given" }), new Client(fx.daemon.url)];
  if (saved === undefined) delete process.env[TOKEN_ENV];
  else process.env[TOKEN_ENV] = saved;
  try {
    const sent = (c: Client) => c.callOptions(undefined).metadata.get("authorization");
    assert.deepEqual(sent(given), ["Bearer given"]);
    assert.deepEqual(sent(fromEnv), ["Bearer from-the-environment"]);
    assert.deepEqual(sent(fx.client), saved ? [`Bearer ${saved}`] : []);
    // A daemon without [auth] allows calls with credentials too.
    assert.deepEqual(await new Tweets(given).get("bob"), ["bob #1"]);
    assert.deepEqual(await given.workers(), new Map([["test.Tweets", 1]]));
  } finally {
    for (const c of [given, fromEnv]) c.close();
  }
});

test("a token is never sent in plaintext to another machine unless allowed", () => {
  for (const local of ["127.0.0.1:7070", "127.1.2.3:1", "localhost:7070", "[::1]:7070", "unix:/run/x.sock"]) {
    assert.ok(isLocal(local), local);
    new Client(local, { token: "t" }).close();
  }
  for (const remote of ["10.0.0.1:7070", "cache.internal:7070", "[2001:db8::1]:7070"]) {
    assert.ok(!isLocal(remote), remote);
    assert.throws(() => new Client(`http://${remote}`, { token: "t" }), /refusing to send a bearer token in plaintext/);
    new Client(remote, { token: "t", allowPlaintextToken: true }).close();
    new Client(remote).close(); // no token, nothing to guard
  }
});

test("the default client reads CACHEBACKD_URL", async () => {
  const job = new Tweets(fx.client);
  await fx.worker([job]);
  const saved = process.env[URL_ENV];
  process.env[URL_ENV] = fx.daemon.url;
  setDefaultClient(undefined);
  try {
    const viaEnv = new Tweets();
    assert.equal(viaEnv.client.target, fx.daemon.listen);
    assert.deepEqual(await viaEnv.get("bob"), ["bob #1"]);
  } finally {
    defaultClient().close();
    setDefaultClient(undefined);
    if (saved === undefined) delete process.env[URL_ENV];
    else process.env[URL_ENV] = saved;
  }
  assert.equal(grpc.status[grpc.status.NOT_FOUND], "NOT_FOUND");
});

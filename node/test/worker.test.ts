/** The Worker's life: registration, reconnection after the daemon restarts, graceful stop. */

import assert from "node:assert/strict";
import { afterEach, beforeEach, test } from "node:test";

import { CachebackError, Job, Worker } from "../src";
import { Fixture, WAIT, quietLogger, signal } from "./harness";

/** A job whose fetches wait until the test lets them go. */
class Gated extends Job<[string], string> {
  name = "test.Gated";
  refreshTimeout = WAIT;
  started = signal<string>();
  gate = signal();
  calls = 0;

  async fetch(key: string): Promise<string> {
    this.calls++;
    this.started.resolve(key);
    await this.gate.promise;
    return `${key} fetched`;
  }
}

let fx: Fixture;
beforeEach(async () => {
  fx = await Fixture.start();
});
afterEach(async () => {
  await fx.close();
});

test("a worker registers again after the daemon restarts, and serves on", async () => {
  const job = new Gated(fx.client);
  job.gate.resolve();
  const worker = new Worker({ client: fx.client, logger: quietLogger(), reconnectInitial: 0.05, reconnectMax: 0.5 });
  fx.workers.push(worker.serve(job).start());
  await worker.ready({ timeout: WAIT });
  assert.equal(worker.registrations, 1);
  await fx.daemon.restart();
  await worker.ready({ count: 2, timeout: WAIT });
  assert.equal(worker.registrations, 2);
  assert.equal(await job.get("after"), "after fetched");
  assert.deepEqual(await fx.daemon.workers(), new Map([["test.Gated", 1]]));
});

test("stop drains: the fetch in flight finishes and is delivered, then the stream closes", async () => {
  const job = new Gated(fx.client);
  const worker = await fx.worker([job]);
  const reading = job.getItem("bob");
  assert.equal(await job.started.promise, "bob");
  let stopped = false;
  const stopping = worker.stop().then(() => (stopped = true));
  await new Promise((ok) => setImmediate(ok));
  assert.equal(stopped, false, "stop waits for the fetch in flight");
  job.gate.resolve();
  const item = await reading;
  assert.deepEqual([item.state, item.fetched, item.data], ["FRESH", true, "bob fetched"]);
  await stopping;
  assert.deepEqual(await fx.daemon.workers(), new Map([["test.Gated", 0]]));
  assert.equal(job.calls, 1);
  assert.throws(() => worker.start(), /cannot be started again/);
});

test("a worker serves several jobs, one stream each", async () => {
  class Other extends Gated {
    name = "test.Other";
  }
  const [a, b] = [new Gated(fx.client), new Other(fx.client)];
  a.gate.resolve();
  b.gate.resolve();
  const worker = await fx.worker([a, b], { maxInFlight: 2 });
  assert.deepEqual(worker.jobs, ["test.Gated", "test.Other"]);
  assert.deepEqual([await a.get("x"), await b.get("y")], ["x fetched", "y fetched"]);
  assert.deepEqual(await fx.daemon.workers(), new Map([["test.Gated", 1], ["test.Other", 1]]));
  assert.throws(() => worker.serve(a), /already served/);
  assert.throws(() => new Worker({ client: fx.client }).serve(a, { maxInFlight: 0 }), /maxInFlight/);
});

test("a fetch still running at its deadline is abandoned, and its slot serves the next fetch", async () => {
  class Stuck extends Gated {
    refreshTimeout = 1;
    async fetch(key: string): Promise<string> {
      return key === "stuck" ? super.fetch(key) : `${key} fetched`;
    }
  }
  const job = new Stuck(fx.client);
  await fx.worker([job], { maxInFlight: 1 });
  await assert.rejects(job.get("stuck"), (e: CachebackError) => e.codeName === "UNAVAILABLE");
  assert.equal(await job.get("next"), "next fetched");
  job.gate.resolve();
});

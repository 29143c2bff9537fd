/** The Worker's life: registration, reconnection after the daemon restarts, graceful stop. */

import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, test } from "node:test";

import { CachebackError, Job, Worker, type AnswerRefused } from "../src";
import { Fixture, REPO, WAIT, quietLogger, signal } from "./harness";

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

/** Answers "big" with 200 KiB of data, anything else with a short string. */
class Sized extends Job<[string], string> {
  name = "test.Sized";

  async fetch(key: string): Promise<string> {
    return key === "big" ? "x".repeat(200 * 1024) : `${key} fetched`;
  }
}

test("a refused answer is logged, counted and passed to onRefused, and the worker serves on", async () => {
  const own = await Fixture.start({ args: ["--max-answer-bytes", "100KiB"] });
  try {
    const told = signal<AnswerRefused>();
    const refusals: AnswerRefused[] = [];
    const logger = quietLogger();
    const worker = new Worker({
      client: own.client,
      logger,
      onRefused: (r) => {
        refusals.push(r);
        told.resolve(r);
      },
    });
    own.workers.push(worker.serve(new Sized()).start());
    await worker.ready({ timeout: WAIT });
    const job = new Sized(own.client);
    const failed = await job.get("big").then(
      () => assert.fail("the big answer is refused"),
      (e: unknown) => e,
    );
    assert.ok(failed instanceof CachebackError, String(failed));
    assert.equal(failed.code, grpc.status.UNAVAILABLE);
    const refused = await told.promise;
    assert.equal(refused.job, "test.Sized");
    assert.equal(refused.code, grpc.status.UNAVAILABLE);
    assert.equal(refused.reason, failed.details);
    assert.match(refused.reason, /max_answer_bytes/);
    assert.match(refused.requestId, /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/);
    assert.equal(worker.refused, 1);
    const lines = logger.lines.filter((l) => l.includes("refused the answer"));
    assert.equal(lines.length, 1, lines.join("\n"));
    assert.ok(lines[0].includes(refused.requestId) && lines[0].includes("UNAVAILABLE"), lines[0]);
    // Same stream: the next answer is taken.
    assert.equal(await job.get("bob"), "bob fetched");
    assert.equal(worker.registrations, 1);
    assert.equal(worker.refused, 1);
    assert.equal(refusals.length, 1);
  } finally {
    await own.close();
  }
});

test("a worker loading the proto from before `refused` decodes the notice as a message of no kind", () => {
  const load = (dir: string) =>
    protoLoader.loadSync("cacheback/v1/cacheback.proto", { longs: Number, enums: String, defaults: true, oneofs: true, includeDirs: [dir] });
  const protoDir = join(REPO, "proto");
  const register = (definition: protoLoader.PackageDefinition) =>
    (definition["cacheback.v1.Cacheback"] as protoLoader.ServiceDefinition).RegisterJob;
  const current = register(load(protoDir));
  const notice = current.responseSerialize({ refused: { requestId: "r", code: 14, reason: "why" } });
  assert.equal((current.responseDeserialize(notice) as { kind?: string }).kind, "refused");
  const text = readFileSync(join(protoDir, "cacheback", "v1", "cacheback.proto"), "utf8");
  const before = text.replace(/^\s*AnswerRefused refused = 4;\n/m, "");
  assert.notEqual(before, text);
  const old = mkdtempSync(join(tmpdir(), "cachebackd-old-proto-"));
  try {
    mkdirSync(join(old, "cacheback", "v1"), { recursive: true });
    writeFileSync(join(old, "cacheback", "v1", "cacheback.proto"), before);
    const decoded = register(load(old)).responseDeserialize(notice) as { kind?: string };
    assert.equal(decoded.kind, undefined);
  } finally {
    rmSync(old, { recursive: true, force: true });
  }
});

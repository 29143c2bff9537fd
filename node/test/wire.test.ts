/** The Node package's wire conventions are the protocol crate's: every constant of
 * `src/wire.rs` written as a literal has the same value in `src/wire.ts`, and the package
 * uses them where it sets the matching defaults (as python/tests/test_wire.py checks for
 * Python). */

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";

import { Client, GET_MANY_LIMIT, Job, MAX_MESSAGE_BYTES, NAME_PATTERN, Worker, wire } from "../src";
import { REPO } from "./harness";

/** `pub const NAME: type = literal;`, the literal made of digits, `_`, `*`, spaces or a bool. */
const CONST = /^pub const ([A-Z_]+): (?:u32|u64|usize|bool) = ([0-9_* ]+|true|false);$/gm;

function rustConstants(): Record<string, number | boolean> {
  const found: Record<string, number | boolean> = {};
  for (const [, name, literal] of readFileSync(join(REPO, "src", "wire.rs"), "utf8").matchAll(CONST)) {
    found[name!] =
      literal === "true" || literal === "false"
        ? literal === "true"
        : literal!
            .replaceAll("_", "")
            .split("*")
            .reduce((product, factor) => product * Number(factor), 1);
  }
  return found;
}

test("every Rust wire constant has the same value in Node, and Node has no other", () => {
  const rust = rustConstants();
  assert.equal(Object.keys(rust).length, 14, Object.keys(rust).join(" "));
  assert.deepEqual({ ...wire }, rust);
});

test("the package's defaults come from the wire module", () => {
  class Probe extends Job<[], null> {
    fetch(): null {
      return null;
    }
  }
  const job = new Probe();
  // The one deliberate difference: cacheback's own default, as the Python client's.
  assert.equal(job.lifetime, 600);
  assert.notEqual(job.lifetime, wire.JOB_LIFETIME_SECS);
  assert.deepEqual(
    [job.refreshTimeout, job.fetchOnMiss, job.cacheTtl, job.maxInFlight],
    [wire.JOB_REFRESH_TIMEOUT_SECS, wire.JOB_FETCH_ON_MISS, wire.JOB_CACHE_TTL_SECS, wire.DEFAULT_MAX_IN_FLIGHT],
  );
  assert.equal(GET_MANY_LIMIT, wire.MAX_GET_MANY);
  assert.equal(MAX_MESSAGE_BYTES, wire.CLIENT_MAX_MESSAGE_BYTES);
  assert.ok(NAME_PATTERN.test("x".repeat(wire.MAX_JOB_NAME_BYTES)));
  assert.ok(!NAME_PATTERN.test("x".repeat(wire.MAX_JOB_NAME_BYTES + 1)));
  const client = new Client("127.0.0.1:1");
  const worker = new Worker({ client });
  assert.deepEqual(worker.backoff, { initial: wire.RECONNECT_MIN_MILLIS / 1000, max: wire.RECONNECT_MAX_MILLIS / 1000 });
  client.close();
});

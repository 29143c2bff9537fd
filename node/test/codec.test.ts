import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, test } from "node:test";

import { decodeArgs, encodeArgs, encodeJson } from "../src";

interface Vector {
  name: string;
  input: string;
  expected: string;
}

// Written by scripts/gen-vectors.py from Python's json.dumps; the Python and Rust suites
// check their codecs against the same file.
const VECTORS: Vector[] = JSON.parse(
  readFileSync(join(__dirname, "..", "..", "test", "fixtures", "canonical-args.json"), "utf8"),
);

const text = (args: unknown[]) => encodeArgs(args).toString("latin1");

describe("canonical args match the Python and Rust codecs byte for byte", () => {
  test("the vector file is there", () => assert.equal(VECTORS.length, 16));
  for (const vector of VECTORS) {
    test(vector.name, () => {
      assert.equal(text(JSON.parse(vector.input) as unknown[]), vector.expected);
    });
  }
});

describe("what JavaScript has that JSON does not say", () => {
  test("a safe integer is written as an integer, as Python writes an int", () => {
    assert.equal(text([1, 1.0, -0, 2 ** 53 - 1]), "[1,1,0,9007199254740991]");
  });

  test("a number past 2^53 is written as Python writes a float", () => {
    assert.equal(text([2 ** 53, 1e16, 1e21]), "[9007199254740992.0,1e+16,1e+21]");
  });

  test("a bigint is written as its digits", () => {
    assert.equal(text([12345678901234567890n]), "[12345678901234567890]");
  });

  test("a Date is written as its ISO string, as JSON.stringify does", () => {
    assert.equal(text([new Date(Date.UTC(2026, 0, 2, 3, 4, 5))]), '["2026-01-02T03:04:05.000Z"]');
  });

  test("undefined object properties are left out, as JSON.stringify does", () => {
    assert.equal(text([{ b: undefined, a: 1 }]), '[{"a":1}]');
  });

  test("values no other language reads are refused", () => {
    assert.throws(() => encodeJson([Number.NaN]), RangeError);
    assert.throws(() => encodeJson([Infinity]), RangeError);
    assert.throws(() => encodeJson([undefined]), /undefined has no JSON form/);
    assert.throws(() => encodeJson([() => 1]), /function has no JSON form/);
    assert.throws(() => encodeJson([new Map()]), /Map has no JSON form/);
  });

  test("args decode from the JSON array only", () => {
    assert.deepEqual(decodeArgs(Buffer.from('["bob",3]')), ["bob", 3]);
    assert.deepEqual(decodeArgs(Buffer.alloc(0)), []);
    assert.throws(() => decodeArgs(Buffer.from('{"a":1}')), /must be a JSON array/);
  });
});

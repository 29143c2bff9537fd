/**
 * The wire conventions shared by every cachebackd client (PROTOCOL.md, "Client conventions").
 *
 * The daemon keys items by the raw `args` bytes, so a Node reader and a Python or Rust
 * worker share an item only if all of them encode the arguments to the *same bytes*. The
 * convention is Python's `json.dumps(list(args), separators=(",", ":"), sort_keys=True)`:
 * compact, object keys sorted by code point, every character outside printable ASCII
 * escaped as `\uXXXX` (UTF-16 units, so astral characters as surrogate pairs), and floats
 * as Python's `repr` writes them (`1e+16`, `1.5e-05`). `JSON.stringify` differs on all
 * three, so the text is written here.
 *
 * JavaScript has one number type: a safe integer (|n| < 2^53) is written as an integer
 * (`1`, as Python writes an int; pass `1.5`, not `1.0`, for a float), every other finite
 * number as Python writes a float, and a `bigint` as its digits.
 */

/** The bytes stored for `value`: canonical JSON. NaN, infinities, `undefined` in an
 * array, functions and symbols are refused (no other language's JSON reads them);
 * object properties whose value is `undefined` are left out, as `JSON.stringify` does. */
export function encodeJson(value: unknown): Buffer {
  const out: string[] = [];
  writeValue(value, out, "value");
  return Buffer.from(out.join(""), "ascii");
}

/** The `args` bytes of an item: the canonical JSON array of the positional arguments. */
export function encodeArgs(args: readonly unknown[]): Buffer {
  return encodeJson(args);
}

/** The positional arguments of a FetchRequest; anything but a JSON array is an error. */
export function decodeArgs(raw: Uint8Array): unknown[] {
  const args: unknown = raw.length === 0 ? [] : JSON.parse(Buffer.from(raw).toString("utf8"));
  if (!Array.isArray(args)) {
    throw new TypeError(`args must be a JSON array, got ${Buffer.from(raw).subarray(0, 64).toString()}`);
  }
  return args;
}

/** Inverse of {@link encodeJson}. */
export function decodeJson(raw: Uint8Array): unknown {
  return JSON.parse(Buffer.from(raw).toString("utf8"));
}

function writeValue(value: unknown, out: string[], where: string): void {
  if (value !== null && typeof value === "object" && typeof (value as { toJSON?: unknown }).toJSON === "function") {
    value = (value as { toJSON(): unknown }).toJSON(); // a Date becomes its ISO string, as in JSON.stringify
  }
  switch (typeof value) {
    case "string":
      writeString(value, out);
      return;
    case "boolean":
      out.push(value ? "true" : "false");
      return;
    case "number":
      writeNumber(value, out, where);
      return;
    case "bigint":
      out.push(value.toString());
      return;
    case "object":
      if (value === null) {
        out.push("null");
      } else if (Array.isArray(value)) {
        writeArray(value, out, where);
      } else if (value instanceof Map || value instanceof Set || ArrayBuffer.isView(value)) {
        throw new TypeError(`${where}: a ${value.constructor.name} has no JSON form; use a plain object or array`);
      } else {
        writeObject(value as Record<string, unknown>, out, where);
      }
      return;
    default:
      throw new TypeError(`${where}: ${value === undefined ? "undefined" : `a ${typeof value}`} has no JSON form`);
  }
}

function writeArray(items: readonly unknown[], out: string[], where: string): void {
  out.push("[");
  for (let i = 0; i < items.length; i++) {
    if (i > 0) out.push(",");
    if (items[i] === undefined) throw new TypeError(`${where}[${i}]: undefined has no JSON form`);
    writeValue(items[i], out, `${where}[${i}]`);
  }
  out.push("]");
}

function writeObject(object: Record<string, unknown>, out: string[], where: string): void {
  const keys = Object.keys(object)
    .filter((k) => object[k] !== undefined)
    .sort(compareCodePoints);
  out.push("{");
  keys.forEach((key, i) => {
    if (i > 0) out.push(",");
    writeString(key, out);
    out.push(":");
    writeValue(object[key], out, `${where}.${key}`);
  });
  out.push("}");
}

/** Python sorts `str` keys by code point; JavaScript's default sort compares UTF-16 units,
 * which puts astral characters (surrogates, 0xD800..) before U+E000..U+FFFF. */
function compareCodePoints(a: string, b: string): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) {
    const x = a.codePointAt(i)!;
    const y = b.codePointAt(i)!;
    if (x !== y) return x - y;
    if (x > 0xffff) i++; // both strings hold the same pair here
  }
  return a.length - b.length;
}

const SHORT_ESCAPES: Record<string, string> = {
  '"': '\\"',
  "\\": "\\\\",
  "\n": "\\n",
  "\r": "\\r",
  "\t": "\\t",
  "\b": "\\b",
  "\f": "\\f",
};

/** Python's `json.dumps` string form with `ensure_ascii=True`: printable ASCII as is,
 * every other UTF-16 unit (lone surrogates included) as `\uXXXX`, lowercase hex. */
function writeString(s: string, out: string[]): void {
  out.push('"');
  for (let i = 0; i < s.length; i++) {
    const c = s[i]!;
    const unit = s.charCodeAt(i);
    const short = SHORT_ESCAPES[c];
    if (short !== undefined) out.push(short);
    else if (unit >= 0x20 && unit <= 0x7e) out.push(c);
    else out.push("\\u" + unit.toString(16).padStart(4, "0"));
  }
  out.push('"');
}

function writeNumber(n: number, out: string[], where: string): void {
  if (!Number.isFinite(n)) throw new RangeError(`${where}: ${n} has no JSON form`);
  if (Number.isSafeInteger(n)) {
    out.push(String(n === 0 ? 0 : n)); // -0 is 0, as JSON.stringify writes it
    return;
  }
  writeFloat(n, out);
}

/** Python's `repr(float)`: the shortest round-trip digits (which `toExponential()` gives,
 * as Rust's `{:e}` does), in fixed notation when the decimal exponent is in [-4, 16),
 * otherwise as `1e+16` / `1.5e-05`. */
function writeFloat(f: number, out: string[]): void {
  if (f < 0) out.push("-");
  const [mantissa = "0", exp = "0"] = Math.abs(f).toExponential().split("e");
  const digits = mantissa.replace(".", "");
  const exponent = Number(exp);
  const point = exponent + 1; // the decimal point sits after `point` digits
  if (point <= -4 || point > 16) {
    out.push(digits[0]!);
    if (digits.length > 1) out.push(".", digits.slice(1));
    out.push("e", exponent < 0 ? "-" : "+", String(Math.abs(exponent)).padStart(2, "0"));
  } else if (point <= 0) {
    out.push("0.", "0".repeat(-point), digits);
  } else if (point < digits.length) {
    out.push(digits.slice(0, point), ".", digits.slice(point));
  } else {
    out.push(digits, "0".repeat(point - digits.length), ".0");
  }
}

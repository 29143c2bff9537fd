/** Spans and instants as they cross the wire: seconds (a number, as cacheback's
 * attributes are) to protobuf Durations, protobuf Timestamps to Dates. */

import type { Duration, Timestamp__Output } from "./proto";

/** `seconds` as a protobuf Duration; negative or non-finite spans are refused. */
export function toDuration(seconds: number, what = "a span"): Duration {
  if (!Number.isFinite(seconds) || seconds < 0) {
    throw new RangeError(`${what} must be a finite, non-negative number of seconds, got ${seconds}`);
  }
  let whole = Math.floor(seconds);
  let nanos = Math.round((seconds - whole) * 1e9);
  if (nanos >= 1e9) {
    whole += 1;
    nanos -= 1e9;
  }
  return { seconds: whole, nanos };
}

/** A protobuf Timestamp as a Date (millisecond precision); null when unset. */
export function fromTimestamp(ts: Timestamp__Output | null | undefined): Date | null {
  if (ts === null || ts === undefined) return null;
  return new Date(Number(ts.seconds) * 1000 + Math.floor(ts.nanos / 1e6));
}

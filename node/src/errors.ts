/** The one error the client throws for a failed call, keeping the gRPC status. */

import { status as Status, type ServiceError } from "@grpc/grpc-js";

/**
 * A call to the daemon failed.
 *
 * `code` is the gRPC status code (`grpc.status.NOT_FOUND`...) and `details` the daemon's
 * message, so callers can tell apart PROTOCOL.md's error cases: NOT_FOUND (job never
 * registered), INVALID_ARGUMENT (bad name, args or data too large), UNAVAILABLE (the
 * fetch failed, carrying the worker's message, or the daemon is unreachable),
 * DEADLINE_EXCEEDED (the client's deadline passed first).
 */
export class CachebackError extends Error {
  override readonly name = "CachebackError";

  constructor(
    readonly code: Status,
    readonly details: string,
  ) {
    super(`${Status[code] ?? code}: ${details}`);
  }

  /** The status name: `"NOT_FOUND"`, `"UNAVAILABLE"`... */
  get codeName(): string {
    return Status[this.code] ?? String(this.code);
  }

  /** Wraps a grpc-js error (anything else becomes UNKNOWN with its message). */
  static from(error: unknown): CachebackError {
    if (error instanceof CachebackError) return error;
    const e = error as Partial<ServiceError>;
    if (typeof e.code === "number") return new CachebackError(e.code, e.details ?? e.message ?? "");
    return new CachebackError(Status.UNKNOWN, error instanceof Error ? error.message : String(error));
  }
}

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
  override readonly name: string = "CachebackError";

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
    if (typeof e.code === "number") {
      const details = e.details ?? e.message ?? "";
      // The daemon's own answers carry headers (at least `date`); a status that grpc-js
      // made up for a connection that failed or broke carries none.
      const fromDaemon = e.metadata !== undefined && Object.keys(e.metadata.getMap()).length > 0;
      if (e.code === Status.UNAVAILABLE && fromDaemon) return new FetchFailed(details);
      return new CachebackError(e.code, details);
    }
    return new CachebackError(Status.UNKNOWN, error instanceof Error ? error.message : String(error));
  }
}

/** The fetch of an item failed (the worker's error, or no worker answered in time) and
 * there was no stale data to serve instead: UNAVAILABLE from the daemon itself, told apart
 * from an unreachable daemon, which is a plain CachebackError with UNAVAILABLE. */
export class FetchFailed extends CachebackError {
  override readonly name = "FetchFailed";

  constructor(details: string) {
    super(Status.UNAVAILABLE, details);
  }
}

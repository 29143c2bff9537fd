/** The one error the client throws for a failed call, keeping the gRPC status. */

import { status as Status, type Metadata, type ServiceError } from "@grpc/grpc-js";

/** What the daemon says while it drains: UNAVAILABLE, but no fetch failed. */
export const SHUTTING_DOWN = "cachebackd is shutting down";

/** Whether a status came from the daemon: its answers carry headers (at least `date`); a
 * status that grpc-js made up for a connection that failed or broke carries none. */
export function answeredByDaemon(status: { metadata?: Metadata }): boolean {
  return status.metadata !== undefined && Object.keys(status.metadata.getMap()).length > 0;
}

/** Whether a failed call found its daemon down (the connection refused or broken, or the
 * daemon draining) rather than refused by it: then another daemon of a fleet may serve it. */
export function daemonDown(status: { code?: number; details?: string; metadata?: Metadata }): boolean {
  return status.code === Status.UNAVAILABLE && (status.details === SHUTTING_DOWN || !answeredByDaemon(status));
}

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
      if (e.code === Status.UNAVAILABLE && answeredByDaemon(e) && details !== SHUTTING_DOWN) {
        return new FetchFailed(details);
      }
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

/** None of several daemons could be reached: each was tried once, in turn (the connection
 * refused or broken). `tried` holds their URLs in that order; `code` is UNAVAILABLE. */
export class NoDaemonError extends CachebackError {
  override readonly name = "NoDaemonError";

  constructor(
    readonly rpc: string,
    readonly tried: readonly string[],
    code: Status,
    lastDetails: string,
  ) {
    super(code, `no cachebackd daemon answered ${rpc} (tried ${tried.join(", ")}): ${lastDetails}`);
  }
}

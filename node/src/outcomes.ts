/**
 * What a fetch can say beyond returning data (PROTOCOL.md, "Additions: Outcomes of a fetch").
 *
 * A cachebackd `fetch` returns data or throws, as in django-cacheback; it may also:
 *
 * - `throw new Absent()` (or return one): the origin has no such data. The daemon stores
 *   the absence for the job's `absentLifetime` (negative caching) and `get` resolves to
 *   null meanwhile, sparing the origin a call per read of a missing row;
 * - `throw new NotModified()` (or return one): the stored data is still current
 *   (`fetchContext().validator` says which version is stored); the daemon keeps it and
 *   makes it fresh again, and no data is sent;
 * - `return new Fetched(data, { validator, tags, lifetime })`: data with a validator (an
 *   ETag, a version) that the next refresh receives, and tags for `invalidateTags`.
 *
 * Absent and NotModified are Errors so that a fetch can throw them from deep inside its
 * origin call, as the Python client's exceptions; returning them works as well.
 */

import { AsyncLocalStorage } from "node:async_hooks";

/** The origin has no such data: stored as an absence, read back as null. `tags` are
 * stored with it (default: the job's `tags()`); `lifetime` (seconds) replaces the job's
 * `absentLifetime` for this item. */
export class Absent extends Error {
  readonly tags: readonly string[];
  readonly lifetime: number | undefined;

  constructor(options: { tags?: readonly string[]; lifetime?: number } = {}) {
    super("absent");
    this.name = "Absent";
    this.tags = options.tags ?? [];
    this.lifetime = options.lifetime;
  }
}

/** A refresh whose `fetchContext().validator` is still current: the stored data,
 * validator and tags are kept and made fresh for `lifetime` seconds (default: the job's). */
export class NotModified extends Error {
  readonly lifetime: number | undefined;

  constructor(options: { lifetime?: number } = {}) {
    super("not modified");
    this.name = "NotModified";
    this.lifetime = options.lifetime;
  }
}

/** What is stored alongside fetched data. */
export interface FetchedOptions {
  /** Opaque, at most 256 bytes (a string is sent as UTF-8), given back to the next refresh
   * in `fetchContext().validator`. */
  validator?: Uint8Array | string;
  /** At most 32, each spelled like a job name; empty: the job's `tags()`. */
  tags?: readonly string[];
  /** This item's lifetime in seconds, over the job's `expiry()`. */
  lifetime?: number;
}

/** Data returned by `fetch` with its validator, tags or lifetime. */
export class Fetched<T> {
  readonly validator: Buffer | undefined;
  readonly tags: readonly string[];
  readonly lifetime: number | undefined;

  constructor(
    readonly data: T,
    options: FetchedOptions = {},
  ) {
    const { validator } = options;
    this.validator = validator === undefined ? undefined : Buffer.from(validator as Uint8Array);
    this.tags = options.tags ?? [];
    this.lifetime = options.lifetime;
  }
}

/** Why a fetch was asked for. */
export type FetchReason = "MISS" | "STALE" | "INVALIDATED" | "EARLY";

/** The context of the fetch running: why, and the validator of the stored data on a
 * refresh of an item that has one (null otherwise). */
export interface FetchContext {
  readonly reason: FetchReason;
  readonly validator: Buffer | null;
}

const OUTSIDE: FetchContext = Object.freeze({ reason: "MISS", validator: null });
const CONTEXT = new AsyncLocalStorage<FetchContext>();

/** The context of the fetch this code runs in (it follows awaits, through
 * AsyncLocalStorage): read it inside `fetch` to answer a conditional refresh. Outside a
 * worker's fetch: a MISS with no validator. */
export function fetchContext(): FetchContext {
  return CONTEXT.getStore() ?? OUTSIDE;
}

/** @internal Used by the worker around each fetch. */
export function withFetchContext<R>(context: FetchContext, run: () => R): R {
  return CONTEXT.run(context, run);
}

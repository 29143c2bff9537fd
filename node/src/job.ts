/**
 * `Job` and `cacheback()`: django-cacheback's API, with the daemon in place of the task queue.
 *
 * A job says how to fetch some slow data (`fetch`) and how long it stays fresh
 * (`lifetime`). Readers call `get`; a `Worker` in the app server runs `fetch` when the
 * daemon asks. The fields become the job's JobConfig when a worker registers it;
 * `expiry` and `shouldMissingItemBeFetchedSynchronously` are evaluated on the client side
 * and travel as `FetchedValue.lifetime` and `GetRequest.fetch_on_miss`, as in the Rust and
 * Python clients.
 */

import { Client, defaultClient, type Invalidated, Item } from "./client";
import { decodeJson, encodeArgs, encodeJson } from "./codec";
import { CachebackError } from "./errors";
import type { JobConfig } from "./proto";
import { toDuration } from "./time";
import {
  DEFAULT_MAX_IN_FLIGHT,
  JOB_CACHE_TTL_SECS,
  JOB_FETCH_ON_MISS,
  JOB_REFRESH_TIMEOUT_SECS,
  MAX_JOB_NAME_BYTES,
} from "./wire";

/** Job names the daemon accepts (PROTOCOL.md, "Errors"). */
export const NAME_PATTERN = new RegExp(`^[A-Za-z0-9_.:-]{1,${MAX_JOB_NAME_BYTES}}$`);

/** Returns `name` if the daemon accepts it as a job name, else throws a TypeError. */
export function validateName(name: string): string {
  if (typeof name !== "string" || !NAME_PATTERN.test(name)) {
    throw new TypeError(
      `invalid job name ${JSON.stringify(name)}: 1 to 128 characters of A-Z a-z 0-9 _ . : - ` +
        "(set `name` on the job, or pass name to cacheback())",
    );
  }
  return name;
}

/**
 * A cached, background-refreshed computation, as in django-cacheback.
 *
 * ```ts
 * class UserTweets extends Job<[string], Tweet[]> {
 *   override name = "tweets.UserTweets";
 *   override lifetime = 600;
 *   async fetch(username: string) { return slowFetch(username); }
 * }
 * const tweets = await new UserTweets().get("bob");
 * ```
 *
 * `A` is the tuple of positional arguments, `T` the data; both must be JSON-encodable
 * (override `encode`/`decode` for another data format). Spans are in seconds. The name
 * is the class's name unless set (set it: minifiers rename classes, and another
 * language's worker or reader needs the same name).
 */
export abstract class Job<A extends unknown[] = unknown[], T = unknown> {
  /** The job's name on the daemon: the class's name unless set. */
  name: string;
  /** How long fetched data is fresh, in seconds: cacheback's default, 10 minutes, as the
   * Python client's (the one deliberate difference from the daemon's JOB_LIFETIME_SECS),
   * so that a ported job keeps it. */
  lifetime = 600;
  /** How long one fetch may take before it counts as lost; also the fetch deadline. */
  refreshTimeout = JOB_REFRESH_TIMEOUT_SECS;
  /** A miss waits for a synchronous fetch (true) or returns null at once and fills
   * asynchronously (false). */
  fetchOnMiss = JOB_FETCH_ON_MISS;
  /** If an item has been stale for longer than this, `get` fetches synchronously instead
   * of serving it (null: never); the daemon applies it. */
  fetchOnStaleThreshold: number | null = null;
  /** Hard limit: an item older than this (since it was stored) is never served. */
  cacheTtl = JOB_CACHE_TTL_SECS;
  /** How many fetches of this job a worker runs at once. */
  maxInFlight = DEFAULT_MAX_IN_FLIGHT;

  private readonly explicitClient: Client | undefined;

  constructor(client?: Client) {
    this.name = new.target.name;
    this.explicitClient = client;
  }

  /** The client given to the constructor, else the process-wide default. */
  get client(): Client {
    return this.explicitClient ?? defaultClient();
  }

  // What to override.

  /** Computes the data for `args`; runs in a worker. */
  abstract fetch(...args: A): Promise<T> | T;

  /**
   * When data just fetched for `args` stops being fresh: a Date, or a Unix time in
   * seconds as in cacheback (`Date.now() / 1000 + 60`). The default is `lifetime` from
   * now, so an override may fall back on `super.expiry(...args)`. Evaluated by the worker
   * right after `fetch`, only when overridden: the result becomes the item's own lifetime.
   */
  expiry(..._args: A): Date | number {
    return Date.now() / 1000 + this.lifetime;
  }

  /** Whether `get(...args)` on a miss waits for a fetch (true) or returns null. Evaluated
   * by the reader and sent with every read, so the reader's job decides, as in cacheback. */
  shouldMissingItemBeFetchedSynchronously(..._args: A): boolean {
    return this.fetchOnMiss;
  }

  /** The bytes stored for fetched or set data: canonical JSON. */
  encode(data: T): Buffer {
    return encodeJson(data);
  }

  /** Inverse of `encode`. */
  decode(raw: Buffer): T {
    return decodeJson(raw) as T;
  }

  // What to call.

  /** The cached data for `args`, fresh or stale; null on an asynchronous miss. Rejects with
   * a CachebackError if a synchronous fetch fails (UNAVAILABLE, with the worker's message)
   * or the job was never registered (NOT_FOUND). */
  async get(...args: A): Promise<T | null> {
    const item = await this.getItem(...args);
    return item.data;
  }

  /** Like `get`, but the whole answer: state, data, storedAt, expiresAt, flags. */
  async getItem(...args: A): Promise<Item<T>> {
    const fetchOnMiss = Boolean(this.shouldMissingItemBeFetchedSynchronously(...args));
    const item = await this.client.get(validateName(this.name), encodeArgs(args), { fetchOnMiss });
    return item.decoded((raw) => this.decode(raw));
  }

  /** What is stored for `args`, starting nothing: no fetch on a miss, no refresh of stale
   * data (django-cacheback's `raw_get`). FRESH or STALE with the data, or MISS. */
  async rawGet(...args: A): Promise<Item<T>> {
    const item = await this.client.get(validateName(this.name), encodeArgs(args), { peek: true });
    return item.decoded((raw) => this.decode(raw));
  }

  /** `get` for many items in few calls: one entry per args list, in order
   * (`tweets.getMany([["bob"], ["alice"]])`). Rejects with the first item's error, as its
   * own `get` would; `getManyItems` gives every item's outcome instead. */
  async getMany(argLists: readonly A[]): Promise<(T | null)[]> {
    const items = await this.getManyItems(argLists);
    return items.map((item) => {
      if (item instanceof CachebackError) throw item;
      return item.data;
    });
  }

  /** Like `getMany`, but each item's whole answer, or its error, in order. */
  async getManyItems(argLists: readonly A[]): Promise<(Item<T> | CachebackError)[]> {
    const items = await this.client.getMany(
      validateName(this.name),
      argLists.map((a) => encodeArgs(a)),
      { fetchOnMiss: argLists.map((a) => Boolean(this.shouldMissingItemBeFetchedSynchronously(...a))) },
    );
    return items.map((i) => (i instanceof CachebackError ? i : i.decoded((raw) => this.decode(raw))));
  }

  /** Stores data directly, as cacheback's `job.set(*args, data)`: the arguments, then the
   * data. Resolves to when it stops being fresh. */
  async set(...argsAndData: [...A, T]): Promise<Date> {
    const args = argsAndData.slice(0, -1) as A;
    return this.setWithLifetime(args, argsAndData[argsAndData.length - 1] as T, undefined);
  }

  /** `set` with the item's own lifetime in seconds (undefined: the job's). */
  async setWithLifetime(args: A, data: T, lifetime: number | undefined): Promise<Date> {
    return this.client.set(validateName(this.name), encodeArgs(args), this.encode(data), { lifetime });
  }

  /** Marks the item stale and refreshes it in the background; stale data is served until
   * the refresh lands. `found` says whether the item existed. */
  async invalidate(...args: A): Promise<Invalidated> {
    return this.client.invalidate(validateName(this.name), encodeArgs(args));
  }

  /** Removes the item, so that the next `get` is a miss. Resolves to whether it existed. */
  async delete(...args: A): Promise<boolean> {
    return this.client.delete(validateName(this.name), encodeArgs(args));
  }

  // Used by the worker.

  /** The JobConfig a worker registers (throws a RangeError if the daemon would refuse it:
   * a negative span, or a zero refreshTimeout or cacheTtl). */
  config(): JobConfig {
    validateName(this.name);
    for (const [field, value] of [
      ["refreshTimeout", this.refreshTimeout],
      ["cacheTtl", this.cacheTtl],
    ] as const) {
      if (!(value > 0)) throw new RangeError(`${this.name}: ${field} must be more than zero, got ${value}`);
    }
    const config: JobConfig = {
      lifetime: toDuration(this.lifetime, `${this.name}: lifetime`),
      refreshTimeout: toDuration(this.refreshTimeout, `${this.name}: refreshTimeout`),
      fetchOnMiss: Boolean(this.fetchOnMiss),
      cacheTtl: toDuration(this.cacheTtl, `${this.name}: cacheTtl`),
    };
    if (this.fetchOnStaleThreshold !== null) {
      config.fetchOnStaleThreshold = toDuration(this.fetchOnStaleThreshold, `${this.name}: fetchOnStaleThreshold`);
    }
    return config;
  }

  /** The per-item lifetime in seconds to send with fetched data: from `expiry`, when overridden. */
  itemLifetime(args: A): number | undefined {
    if (this.expiry === Job.prototype.expiry) return undefined;
    const expiry = this.expiry(...args);
    const at = expiry instanceof Date ? expiry.getTime() / 1000 : Number(expiry);
    if (!Number.isFinite(at)) throw new RangeError(`${this.name}: expiry() returned ${String(expiry)}`);
    return Math.max(at - Date.now() / 1000, 0);
  }
}

/** A `cacheback()` function's settings: the Job fields, its name and its client. */
export interface CachebackOptions {
  name?: string;
  lifetime?: number;
  refreshTimeout?: number;
  fetchOnMiss?: boolean;
  fetchOnStaleThreshold?: number | null;
  cacheTtl?: number;
  maxInFlight?: number;
  client?: Client;
}

/** The job behind a `cacheback()` function: `fetch` calls the function. */
export class FunctionJob<A extends unknown[], T> extends Job<A, T> {
  constructor(
    readonly fn: (...args: A) => T | Promise<T>,
    options: CachebackOptions = {},
  ) {
    super(options.client);
    this.name = validateName(options.name ?? fn.name);
    if (options.lifetime !== undefined) this.lifetime = options.lifetime;
    if (options.refreshTimeout !== undefined) this.refreshTimeout = options.refreshTimeout;
    if (options.fetchOnMiss !== undefined) this.fetchOnMiss = options.fetchOnMiss;
    if (options.fetchOnStaleThreshold !== undefined) this.fetchOnStaleThreshold = options.fetchOnStaleThreshold;
    if (options.cacheTtl !== undefined) this.cacheTtl = options.cacheTtl;
    if (options.maxInFlight !== undefined) this.maxInFlight = options.maxInFlight;
  }

  fetch(...args: A): T | Promise<T> {
    return this.fn(...args);
  }
}

/** What `cacheback()` returns: calling it reads through the daemon (null on an
 * asynchronous miss, as in cacheback); `.job` is its FunctionJob (for `invalidate`,
 * `delete`, `set`, and for `Worker.serve`), `.fn` the function itself. */
export interface CachedFunction<A extends unknown[], T> {
  (...args: A): Promise<T | null>;
  readonly job: FunctionJob<A, T>;
  readonly fn: (...args: A) => T | Promise<T>;
}

/**
 * Caches a function through cachebackd, as cacheback's decorator does:
 *
 * ```ts
 * const fetchTweets = cacheback(async function fetchTweets(username: string) { ... });
 * const fetchTweets = cacheback({ lifetime: 1200, fetchOnMiss: false }, async function fetchTweets(username: string) { ... });
 * ```
 *
 * The job is named after the function unless `name` is given. Serve it with
 * `new Worker().serve(fetchTweets)`.
 */
export function cacheback<A extends unknown[], R>(fn: (...args: A) => R): CachedFunction<A, Awaited<R>>;
export function cacheback<A extends unknown[], R>(
  options: CachebackOptions,
  fn: (...args: A) => R,
): CachedFunction<A, Awaited<R>>;
export function cacheback<A extends unknown[], R>(
  first: CachebackOptions | ((...args: A) => R),
  second?: (...args: A) => R,
): CachedFunction<A, Awaited<R>> {
  const [options, fn] = typeof first === "function" ? [{}, first] : [first, second];
  if (typeof fn !== "function") throw new TypeError("cacheback(options, fn) needs the function to cache");
  const job = new FunctionJob<A, Awaited<R>>(fn as (...args: A) => Promise<Awaited<R>>, options);
  const cached = (...args: A): Promise<Awaited<R> | null> => job.get(...args);
  return Object.assign(cached, { job, fn: job.fn });
}

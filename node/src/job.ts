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

import { Client, defaultClient, type Invalidated, Item, type ReadOptions } from "./client";
import { decodeJson, encodeArgs, encodeJson } from "./codec";
import { CachebackError } from "./errors";
import type { Absent, Fetched, NotModified } from "./outcomes";
import type { JobConfig } from "./proto";
import { toDuration } from "./time";
import {
  DEFAULT_MAX_IN_FLIGHT,
  JOB_CACHE_TTL_SECS,
  JOB_FETCH_ON_MISS,
  JOB_REFRESH_TIMEOUT_SECS,
  MAX_JOB_NAME_BYTES,
} from "./wire";

/** What a fetch resolves to: data, data with what is stored beside it, or an outcome
 * beyond data (see ./outcomes). */
export type FetchOutcome<T> = T | Fetched<T> | Absent | NotModified;

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
  /** XFetch early refresh: a read of a FRESH item near its expiry starts one refresh
   * (reason EARLY), so hot items never turn stale. 1.0 is the paper's optimum; larger
   * refreshes earlier; null (the default): off. */
  earlyRefreshBeta: number | null = null;
  /** How long an `Absent` stays fresh, in seconds (null: the job's lifetime). */
  absentLifetime: number | null = null;
  /** How long a failed fetch of a missing item is remembered, in seconds: a synchronous
   * `get` within it fails at once with the same message, sparing the origin (null: off). */
  errorTtl: number | null = null;
  /** Up to this many fetches reach `fetchMany` at once (1: one `fetch` per item). */
  maxBatch = 1;

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

  /** Computes the data for `args`; runs in a worker. It may also return (or throw) an
   * `Absent` or a `NotModified`, or return a `Fetched` (data with validator and tags). */
  abstract fetch(...args: A): Promise<FetchOutcome<T>> | FetchOutcome<T>;

  /**
   * Fetches many items at once, when the daemon hands the worker a batch (`maxBatch` > 1):
   * one outcome per args list, in order, each what `fetch` would resolve to (data, a
   * `Fetched`, an `Absent`, a `NotModified`) or an Error, which fails that item alone. By
   * default each runs as its own `fetch`; override it to make one origin call for all.
   */
  async fetchMany(argLists: readonly A[]): Promise<(FetchOutcome<T> | Error)[]> {
    return Promise.all(
      argLists.map(async (args) => {
        try {
          return await this.fetch(...args);
        } catch (error) {
          return error instanceof Error ? error : new Error(String(error));
        }
      }),
    );
  }

  /** The item's tags (see `Client.invalidateTags`), stored with what a fetch or `set`
   * stores unless the fetch gives its own: at most 32, each spelled like a job name.
   * Default: none. */
  tags(..._args: A): readonly string[] {
    return [];
  }

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

  /** Like `get`, but the whole answer: state, data, storedAt, expiresAt, absent, tags, flags. */
  async getItem(...args: A): Promise<Item<T>> {
    return this.with({}).getItem(...args);
  }

  /**
   * Reads with options, keeping `get(...args)` for the arguments alone:
   * `tweets.with({ maxAge: 5 }).get("bob")` accepts data at most 5 seconds old (older
   * data is fetched synchronously; if that fails, the old data is answered), and
   * `tweets.with({ peek: true }).getItem("bob")` reads what is stored and starts nothing.
   */
  with(options: JobReadOptions): JobReader<A, T> {
    const read = (args: A): Promise<Item<T>> => {
      const request: ReadOptions = options.peek
        ? { peek: true }
        : { fetchOnMiss: Boolean(this.shouldMissingItemBeFetchedSynchronously(...args)), maxAge: options.maxAge };
      return this.client
        .get(validateName(this.name), encodeArgs(args), request)
        .then((item) => item.decoded((raw) => this.decode(raw)));
    };
    return {
      get: async (...args: A) => (await read(args)).data,
      getItem: (...args: A) => read(args),
    };
  }

  /** What is stored for `args`, starting nothing: no fetch on a miss, no refresh of stale
   * data (django-cacheback's `raw_get`). FRESH or STALE with the data, or MISS. */
  async rawGet(...args: A): Promise<Item<T>> {
    return this.with({ peek: true }).getItem(...args);
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

  /** `set` with the item's own lifetime in seconds (undefined: the job's). The job's
   * `tags(...args)` are stored with it. */
  async setWithLifetime(args: A, data: T, lifetime: number | undefined): Promise<Date> {
    const tags = this.tags(...args);
    return this.client.set(validateName(this.name), encodeArgs(args), this.encode(data), { lifetime, tags });
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
    if (!Number.isInteger(this.maxBatch) || this.maxBatch < 1) {
      throw new RangeError(`${this.name}: maxBatch must be a positive integer, got ${this.maxBatch}`);
    }
    if (this.earlyRefreshBeta !== null) {
      if (!(this.earlyRefreshBeta > 0) || !Number.isFinite(this.earlyRefreshBeta)) {
        throw new RangeError(`${this.name}: earlyRefreshBeta must be greater than 0 and finite, got ${this.earlyRefreshBeta}`);
      }
      config.earlyRefreshBeta = this.earlyRefreshBeta;
    }
    if (this.absentLifetime !== null) {
      config.absentLifetime = toDuration(this.absentLifetime, `${this.name}: absentLifetime`);
    }
    if (this.errorTtl !== null) {
      if (!(this.errorTtl > 0)) throw new RangeError(`${this.name}: errorTtl must be more than zero, got ${this.errorTtl}`);
      config.errorTtl = toDuration(this.errorTtl, `${this.name}: errorTtl`);
    }
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

/** How `Job.with` reads. */
export interface JobReadOptions {
  /** Accept data at most this many seconds old (since it was stored); older data, fresh
   * or stale, is fetched synchronously. With the job's fetchOnStaleThreshold, the
   * smaller bound wins. */
  maxAge?: number;
  /** Read what is stored and start nothing (no fetch, no refresh); maxAge is ignored. */
  peek?: boolean;
}

/** What `Job.with` returns: `get` and `getItem` with those options. */
export interface JobReader<A extends unknown[], T> {
  get(...args: A): Promise<T | null>;
  getItem(...args: A): Promise<Item<T>>;
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
  earlyRefreshBeta?: number | null;
  absentLifetime?: number | null;
  errorTtl?: number | null;
  maxBatch?: number;
  /** The items' tags, from the function's arguments. */
  tags?: (...args: any[]) => readonly string[];
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
    if (options.earlyRefreshBeta !== undefined) this.earlyRefreshBeta = options.earlyRefreshBeta;
    if (options.absentLifetime !== undefined) this.absentLifetime = options.absentLifetime;
    if (options.errorTtl !== undefined) this.errorTtl = options.errorTtl;
    if (options.maxBatch !== undefined) this.maxBatch = options.maxBatch;
    if (options.tags !== undefined) this.tags = options.tags;
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

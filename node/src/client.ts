/**
 * `Client`: one gRPC channel to the daemon, and the item RPCs on raw bytes.
 *
 * Most code uses a `Job`, which encodes arguments and data and calls this; the client is
 * for tools that speak the wire format directly, and for the worker, which shares its
 * channel.
 */

import * as grpc from "@grpc/grpc-js";

import { CachebackError, FetchFailed, NoDaemonError, daemonDown } from "./errors";
import { NearCache, keyOf, nearItem, type NearCacheStats } from "./near";
import {
  cachebackV1,
  type CachebackClient,
  type DeleteResponse__Output,
  type GetManyResponse__Output,
  type GetRequest,
  type GetResponse__Output,
  type InvalidateResponse__Output,
  type InvalidateTagsResponse__Output,
  type ListJobsResponse__Output,
  type SetResponse__Output,
} from "./proto";
import { channelSecurity, checkPlaintextToken, tlsFromEnv, type TlsOptions } from "./security";
import { fromTimestamp, toDuration } from "./time";
import { CLIENT_MAX_MESSAGE_BYTES, MAX_GET_MANY } from "./wire";

/** The environment variable a `Client` without a URL reads (the Rust and Python clients'
 * too); several URLs separated by commas are the daemons of a fleet. */
export const URL_ENV = "CACHEBACKD_URL";
/** The bearer token a `Client` without one sends (PROTOCOL.md, "Security"), as the Python client. */
export const TOKEN_ENV = "CACHEBACKD_TOKEN";
/** Where the daemon listens when nothing says otherwise. */
export const DEFAULT_URL = "http://127.0.0.1:7070";
/** GetMany takes at most this many Gets a call; longer lists are split. */
export const GET_MANY_LIMIT = MAX_GET_MANY;
/** gRPC's default 4 MiB receive limit is exactly the daemon's data limit, too small for
 * a response carrying 4 MiB of data plus its envelope. */
export const MAX_MESSAGE_BYTES = CLIENT_MAX_MESSAGE_BYTES;

const CHANNEL_OPTIONS: grpc.ChannelOptions = {
  "grpc.max_receive_message_length": MAX_MESSAGE_BYTES,
  "grpc.max_send_message_length": MAX_MESSAGE_BYTES,
  // Reconnect promptly after a daemon restart; gRPC's own default backs off to 120 s.
  "grpc.initial_reconnect_backoff_ms": 100,
  "grpc.max_reconnect_backoff_ms": 5_000,
  // Notice a dead connection under an idle worker stream.
  "grpc.keepalive_time_ms": 30_000,
  "grpc.keepalive_timeout_ms": 10_000,
};

/** What a Get found: FRESH data, STALE data (a refresh is under way), or a MISS. */
export type ItemState = "FRESH" | "STALE" | "MISS";

/** The answer to a Get: data with its state and timestamps. `data` is raw bytes from
 * `Client.get` and decoded data from `Job.getItem`; null on a MISS, as are the times. */
export class Item<T> {
  constructor(
    readonly state: ItemState,
    readonly data: T | null,
    /** When the data was fetched or set. */
    readonly storedAt: Date | null,
    /** When it stops being fresh. */
    readonly expiresAt: Date | null,
    /** An asynchronous fetch of this item was started by this call or is in flight. */
    readonly refreshScheduled: boolean,
    /** This call waited for a synchronous fetch (its own or one it joined). */
    readonly fetched: boolean,
    /** The origin said there is no such data (a fetch's `Absent`): FRESH or STALE as any
     * item, data null. */
    readonly absent: boolean = false,
    /** The tags stored with the item. */
    readonly tags: readonly string[] = [],
  ) {}

  /** True for FRESH and STALE: there is data. */
  get hit(): boolean {
    return this.state !== "MISS";
  }

  /** This item with its data decoded (left null on a MISS and when absent). */
  decoded<U>(decode: (raw: T) => U): Item<U> {
    const data = this.hit && !this.absent && this.data !== null ? decode(this.data) : null;
    return new Item(this.state, data, this.storedAt, this.expiresAt, this.refreshScheduled, this.fetched, this.absent, this.tags);
  }
}

/** The answer to an Invalidate. */
export interface Invalidated {
  /** The item existed; an absent item is left alone. */
  readonly found: boolean;
  /** A refresh (reason INVALIDATED) is scheduled or in flight. */
  readonly refreshScheduled: boolean;
}

export interface ClientOptions {
  /** The deadline of every call, in seconds. Unset (the default): none, and a
   * synchronous fetch is then bounded by the job's refresh_timeout on the daemon's side. */
  timeout?: number;
  /** Sent with every call as `authorization: Bearer <token>`; default `$CACHEBACKD_TOKEN`.
   * Never sent in plaintext beyond this machine unless `allowPlaintextToken`. */
  token?: string;
  allowPlaintextToken?: boolean;
  /** TLS settings; `true`: TLS from the environment on a `host:port` URL. Default: TLS
   * from the environment (CACHEBACKD_TLS_CA, _CERT, _KEY) for an `https://` URL, else none. */
  tls?: TlsOptions | boolean;
  /** grpc-js channel options, over ours. */
  channelOptions?: grpc.ChannelOptions;
  /** Keep up to this many items the daemon answered FRESH in this process (at most
   * 90,000) and serve them from `get` without a call while they are fresh and the daemon
   * has told of no change to them (its Subscribe stream); a lost stream drops them all.
   * Reads served locally are not seen by the daemon (no early refresh):
   * `nearCacheStats()` counts them. Default: off. */
  nearCache?: number;
}

/** Per-call settings. */
export interface CallOptions {
  /** This call's deadline in seconds, instead of the client's. */
  timeout?: number;
}

/** The grpc-js target for a cachebackd URL (`http://host:port`, `https://host:port`,
 * `host:port` or `unix:/path`), and whether the URL asks for TLS. */
export function resolveTarget(url: string | undefined): { target: string; https: boolean } {
  const given = url || process.env[URL_ENV] || DEFAULT_URL;
  for (const scheme of ["http://", "grpc://", "https://"]) {
    if (given.startsWith(scheme)) {
      return { target: given.slice(scheme.length).replace(/\/+$/, ""), https: scheme === "https://" };
    }
  }
  return { target: given, https: false };
}

/** The URLs in `urls` (one, several separated by commas, or a list), else in
 * `$CACHEBACKD_URL`, else the default. */
export function resolveUrls(urls: string | readonly string[] | undefined): string[] {
  const given = typeof urls === "string" ? [urls] : urls ?? [];
  const split = given.flatMap((u) => u.split(",")).map((u) => u.trim()).filter((u) => u !== "");
  if (split.length > 0) return split;
  if (urls !== undefined && typeof urls !== "string" && urls.length > 0) throw new RangeError("no cachebackd URL given");
  const fromEnv = (process.env[URL_ENV] ?? "").split(",").map((u) => u.trim()).filter((u) => u !== "");
  return fromEnv.length > 0 ? fromEnv : [DEFAULT_URL];
}

/** How one Get may read: the job's policy overridden, or a peek. */
export interface ReadOptions {
  /** Overrides the job's fetch_on_miss for this call. */
  fetchOnMiss?: boolean;
  /** Read what is stored and start nothing: no fetch, no refresh (django-cacheback's
   * raw_get). FRESH/STALE with the data, or MISS; fetchOnMiss is ignored. */
  peek?: boolean;
  /** Accept data at most this many seconds old (since it was stored): older data, fresh
   * or stale, is fetched synchronously (if that fails, the old data is answered). */
  maxAge?: number;
}

function getRequest(job: string, args: Uint8Array, read: ReadOptions): GetRequest {
  const request: GetRequest = { job, args };
  if (read.fetchOnMiss !== undefined) request.fetchOnMiss = read.fetchOnMiss;
  if (read.peek) request.peek = true;
  if (read.maxAge !== undefined) request.maxAge = toDuration(read.maxAge, "maxAge");
  return request;
}

const ITEM_STATES: Partial<Record<string, ItemState>> = {
  ITEM_STATE_FRESH: "FRESH",
  ITEM_STATE_STALE: "STALE",
  ITEM_STATE_MISS: "MISS",
};

function itemFromReply(reply: GetResponse__Output): Item<Buffer> {
  const state = ITEM_STATES[reply.state];
  if (state === undefined) {
    throw new CachebackError(grpc.status.INTERNAL, `the daemon answered an unknown item state ${reply.state}`);
  }
  const hit = state !== "MISS";
  return new Item<Buffer>(
    state,
    hit && !reply.absent ? reply.data : null,
    fromTimestamp(reply.storedAt),
    fromTimestamp(reply.expiresAt),
    reply.refreshScheduled,
    reply.fetched,
    reply.absent,
    reply.tags,
  );
}

/** A failed item of a GetMany: FetchFailed for UNAVAILABLE (the daemon said it), as a Get's. */
function itemError(code: grpc.status, message: string): CachebackError {
  return code === grpc.status.UNAVAILABLE ? new FetchFailed(message) : new CachebackError(code, message);
}

/** One unary call of the stub, its request bound. */
type Unary<Res> = (
  metadata: grpc.Metadata,
  options: grpc.CallOptions,
  callback: grpc.requestCallback<Res>,
) => grpc.ClientUnaryCall;

/** One daemon of a client: its URL's grpc-js target and the stub on its channel. */
interface Daemon {
  readonly url: string;
  readonly target: string;
  readonly stub: CachebackClient;
  readonly credentials: grpc.ChannelCredentials;
}

/**
 * A connection to cachebackd.
 *
 * `url` is `http://host:port`, `host:port` or `unix:/path/to.sock`; without one,
 * `$CACHEBACKD_URL`, else `http://127.0.0.1:7070`. The channel connects on first use and
 * reconnects by itself; share one client per process (jobs and workers take it).
 *
 * Several URLs (a list, or separated by commas, in the argument or the variable) are the
 * daemons of a fleet: the client uses one, picked at random (app servers given the same
 * list spread over the fleet), and when a call finds it down (connection refused or
 * broken, or the daemon draining; never a status the daemon answered, such as a failed
 * fetch's UNAVAILABLE) it moves to the next and sends the call there, each daemon at most
 * once: every call of a reader is idempotent (a read; a Set of the same data, an
 * Invalidate, a Delete or an InvalidateTags applied twice leave the same state). With all
 * of them down it throws NoDaemonError naming every URL tried. The token and TLS settings
 * apply to every URL; a Worker registers with every daemon.
 */
export class Client {
  readonly timeout: number | undefined;
  private readonly token: string | undefined;
  private readonly daemons: readonly Daemon[];
  private currentIndex: number;
  private moves = 0;
  private readonly near: NearCache | undefined;

  constructor(url?: string | readonly string[], options: ClientOptions = {}) {
    this.timeout = options.timeout;
    this.token = options.token || process.env[TOKEN_ENV] || undefined;
    const Cacheback = cachebackV1().Cacheback;
    this.daemons = resolveUrls(url).map((given) => {
      const { target, https } = resolveTarget(given);
      const fromEnv = options.tls === true || (options.tls === undefined && https);
      const tls = typeof options.tls === "object" ? options.tls : fromEnv ? tlsFromEnv() : undefined;
      checkPlaintextToken(target, this.token, tls !== undefined, options.allowPlaintextToken ?? false);
      const security = channelSecurity(tls);
      const stub = new Cacheback(target, security.credentials, {
        ...CHANNEL_OPTIONS,
        ...security.options,
        ...options.channelOptions,
      });
      return { url: given, target, stub, credentials: security.credentials };
    });
    this.currentIndex = Math.floor(Math.random() * this.daemons.length);
    this.near =
      options.nearCache === undefined
        ? undefined
        : new NearCache(
            {
              current: () => ({ index: this.currentIndex, moves: this.moves }),
              count: this.daemons.length,
              subscribe: (index) => {
                const { metadata, options: call } = this.callOptions(undefined);
                return this.daemons[index]!.stub.Subscribe(metadata, call);
              },
              failOver: (index) => void this.failOver(index),
              isDown: daemonDown,
            },
            options.nearCache,
          );
  }

  /** What the channel of the daemon in use dials (grpc-js's form of its URL). */
  get target(): string {
    return this.daemon().target;
  }

  /** Every daemon's grpc-js target, in the order given. */
  get targets(): string[] {
    return this.daemons.map((d) => d.target);
  }

  /** The generated stub of the daemon in use, for the RPCs this class does not wrap
   * (calls on it do not fail over). */
  get stub(): CachebackClient {
    return this.daemon().stub;
  }

  /** @internal Every daemon's stub, for the worker (which registers with each). */
  get stubs(): { target: string; stub: CachebackClient }[] {
    return this.daemons.map((d) => ({ target: d.target, stub: d.stub }));
  }

  private daemon(): Daemon {
    return this.daemons[this.currentIndex]!;
  }

  /** The daemon at `index` is down: if it is still the one in use, the next one is from
   * now on, and the near cache (whose stream was there) drops everything. */
  private failOver(index: number): void {
    if (this.currentIndex !== index) return;
    this.currentIndex = (index + 1) % this.daemons.length;
    this.moves++;
    this.near?.lostDaemon();
  }

  /** Closes the channels; calls in flight fail with CANCELLED. */
  close(): void {
    this.near?.close();
    for (const d of this.daemons) d.stub.close();
  }

  /** Resolves once the channel of the daemon in use is connected and, with a near cache,
   * its stream is up; rejects after `timeout` seconds. */
  async waitForReady(timeout: number): Promise<void> {
    const stub = this.stub;
    await new Promise<void>((resolve, reject) => {
      stub.waitForReady(Date.now() + timeout * 1000, (error) => (error ? reject(error) : resolve()));
    });
    await this.near?.ready(timeout);
  }

  /** The near cache's counters (hits, misses, items, resets); undefined without one. */
  nearCacheStats(): NearCacheStats | undefined {
    return this.near?.stats();
  }

  /** Metadata and call options of one call (the worker's stream uses them too). */
  callOptions(timeout: number | undefined): { metadata: grpc.Metadata; options: grpc.CallOptions } {
    const options: grpc.CallOptions = {};
    if (timeout !== undefined) options.deadline = Date.now() + timeout * 1000;
    const metadata = new grpc.Metadata();
    if (this.token) metadata.set("authorization", `Bearer ${this.token}`);
    return { metadata, options };
  }

  /** Calls `rpc` on the daemon in use; if it is down, moves on and sends it to the next,
   * each daemon at most once. */
  private async call<Res>(rpc: string, method: (daemon: Daemon) => Unary<Res>, options: CallOptions): Promise<Res> {
    let index = this.currentIndex;
    const tried: string[] = [];
    for (;;) {
      const daemon = this.daemons[index]!;
      const { metadata, options: call } = this.callOptions("timeout" in options ? options.timeout : this.timeout);
      const outcome = await new Promise<{ reply?: Res; error?: grpc.ServiceError }>((resolve) => {
        method(daemon)(metadata, call, (error, reply) => resolve(error || reply === undefined ? { error: error ?? undefined } : { reply }));
      });
      if (outcome.reply !== undefined) return outcome.reply;
      const error = outcome.error;
      if (this.daemons.length === 1 || error === undefined || !daemonDown(error)) throw CachebackError.from(error);
      tried.push(daemon.url);
      this.failOver(index);
      if (tried.length >= this.daemons.length) throw new NoDaemonError(rpc, tried, error.code, error.details);
      index = this.currentIndex;
    }
  }

  /** Reads an item; on a miss or a stale hit the daemon refreshes it as the job says
   * (unless `peek`). */
  async get(job: string, args: Uint8Array, options: CallOptions & ReadOptions = {}): Promise<Item<Buffer>> {
    const request = getRequest(job, args, options);
    const get = (d: Daemon): Unary<GetResponse__Output> => (m, o, cb) => d.stub.Get(request, m, o, cb);
    const near = options.peek || options.maxAge !== undefined ? undefined : this.near;
    if (near === undefined) return itemFromReply(await this.call("Get", get, options));
    const key = keyOf(job, args);
    const hit = near.lookup(key);
    if (hit !== undefined) {
      const item = itemFromReply(hit.reply);
      return new Item(item.state, item.data, item.storedAt, item.expiresAt, false, false, item.absent, item.tags);
    }
    const ticket = near.begin(key);
    let reply: GetResponse__Output;
    try {
      reply = await this.call("Get", get, options);
    } catch (error) {
      if (ticket) near.finish(ticket, undefined);
      throw error;
    }
    if (ticket) near.finish(ticket, nearItem(reply));
    return itemFromReply(reply);
  }

  /** Many Gets of `job` in few calls (the daemon's GetMany, 1,000 a call): one result per
   * args, in order, each what its own `get` would have returned, or the CachebackError it
   * would have thrown. `fetchOnMiss`, if given, holds one override (or undefined) per args. */
  async getMany(
    job: string,
    args: readonly Uint8Array[],
    options: CallOptions & { fetchOnMiss?: readonly (boolean | undefined)[] } = {},
  ): Promise<(Item<Buffer> | CachebackError)[]> {
    const overrides = options.fetchOnMiss ?? args.map(() => undefined);
    if (overrides.length !== args.length) {
      throw new RangeError("fetchOnMiss needs one entry per args");
    }
    const results: (Item<Buffer> | CachebackError)[] = [];
    for (let start = 0; start < args.length; start += GET_MANY_LIMIT) {
      const requests = args
        .slice(start, start + GET_MANY_LIMIT)
        .map((a, i) => getRequest(job, a, { fetchOnMiss: overrides[start + i] }));
      const reply = await this.call<GetManyResponse__Output>(
        "GetMany",
        (d) => (m, o, cb) => d.stub.GetMany({ requests }, m, o, cb),
        options,
      );
      for (const result of reply.results) {
        if (result.response) results.push(itemFromReply(result.response));
        else results.push(itemError(result.error?.code ?? grpc.status.UNKNOWN, result.error?.message ?? ""));
      }
    }
    return results;
  }

  /** Stores data for an item; resolves to when it stops being fresh. `lifetime`
   * (seconds) replaces the job's lifetime for this item only; `tags` are stored with it. */
  async set(
    job: string,
    args: Uint8Array,
    data: Uint8Array,
    options: CallOptions & { lifetime?: number; tags?: readonly string[] } = {},
  ): Promise<Date> {
    const request = {
      job,
      args,
      data,
      tags: [...(options.tags ?? [])],
      ...(options.lifetime === undefined ? {} : { lifetime: toDuration(options.lifetime, "lifetime") }),
    };
    this.near?.forget(keyOf(job, args));
    const reply = await this.call<SetResponse__Output>("Set", (d) => (m, o, cb) => d.stub.Set(request, m, o, cb), options);
    return fromTimestamp(reply.expiresAt) ?? new Date(0);
  }

  /** Marks an item stale now and schedules a refresh; the stale data is served meanwhile. */
  async invalidate(job: string, args: Uint8Array, options: CallOptions = {}): Promise<Invalidated> {
    this.near?.forget(keyOf(job, args));
    const reply = await this.call<InvalidateResponse__Output>(
      "Invalidate",
      (d) => (m, o, cb) => d.stub.Invalidate({ job, args }, m, o, cb),
      options,
    );
    return { found: reply.found, refreshScheduled: reply.refreshScheduled };
  }

  /** Marks stale every item, of any job, that carries one of `tags` (1 to 100, each
   * spelled like a job name) and was stored up to now: each is served STALE and refreshes
   * on its next read (nothing is fetched at the call). Resolves to the instant of the mark. */
  async invalidateTags(tags: readonly string[], options: CallOptions = {}): Promise<Date> {
    const request = { tags: [...tags] };
    const reply = await this.call<InvalidateTagsResponse__Output>(
      "InvalidateTags",
      (d) => (m, o, cb) => d.stub.InvalidateTags(request, m, o, cb),
      options,
    );
    return fromTimestamp(reply.invalidatedBefore) ?? new Date(0);
  }

  /** Every job the daemon knows, with how many worker streams serve it now
   * (CachebackAdmin.ListJobs, on this client's channel). */
  async workers(options: CallOptions = {}): Promise<Map<string, number>> {
    const Admin = cachebackV1().CachebackAdmin;
    const admin = (d: Daemon) => new Admin(d.target, d.credentials, { channelOverride: d.stub.getChannel() });
    const reply = await this.call<ListJobsResponse__Output>("ListJobs", (d) => (m, o, cb) => admin(d).ListJobs({}, m, o, cb), options);
    return new Map(reply.jobs.map((job) => [job.name, job.workers]));
  }

  /** Removes an item, so that the next Get is a miss; resolves to whether it existed. */
  async delete(job: string, args: Uint8Array, options: CallOptions = {}): Promise<boolean> {
    this.near?.forget(keyOf(job, args));
    const reply = await this.call<DeleteResponse__Output>("Delete", (d) => (m, o, cb) => d.stub.Delete({ job, args }, m, o, cb), options);
    return reply.found;
  }
}

let defaultInstance: Client | undefined;

/** The process-wide client that jobs and workers use when given none: made on first use
 * from `$CACHEBACKD_URL`, so that `new UserTweets().get("bob")` works with no setup. */
export function defaultClient(): Client {
  defaultInstance ??= new Client();
  return defaultInstance;
}

/** Replaces the process-wide client (undefined: a new one from the environment on next use). */
export function setDefaultClient(client: Client | undefined): void {
  defaultInstance = client;
}

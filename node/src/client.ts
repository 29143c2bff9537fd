/**
 * `Client`: one gRPC channel to the daemon, and the item RPCs on raw bytes.
 *
 * Most code uses a `Job`, which encodes arguments and data and calls this; the client is
 * for tools that speak the wire format directly, and for the worker, which shares its
 * channel.
 */

import * as grpc from "@grpc/grpc-js";

import { CachebackError, FetchFailed } from "./errors";
import {
  cachebackV1,
  type CachebackClient,
  type DeleteResponse__Output,
  type GetManyResponse__Output,
  type GetRequest,
  type GetResponse__Output,
  type InvalidateResponse__Output,
  type ListJobsResponse__Output,
  type SetResponse__Output,
} from "./proto";
import { channelSecurity, checkPlaintextToken, tlsFromEnv, type TlsOptions } from "./security";
import { fromTimestamp, toDuration } from "./time";
import { CLIENT_MAX_MESSAGE_BYTES, MAX_GET_MANY } from "./wire";

/** The environment variable a `Client` without a URL reads (the Rust and Python clients' too). */
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
  ) {}

  /** True for FRESH and STALE: there is data. */
  get hit(): boolean {
    return this.state !== "MISS";
  }

  /** This item with its data decoded (left null on a MISS). */
  decoded<U>(decode: (raw: T) => U): Item<U> {
    const data = this.hit && this.data !== null ? decode(this.data) : null;
    return new Item(this.state, data, this.storedAt, this.expiresAt, this.refreshScheduled, this.fetched);
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

/** How one Get may read: the job's policy overridden, or a peek. */
export interface ReadOptions {
  /** Overrides the job's fetch_on_miss for this call. */
  fetchOnMiss?: boolean;
  /** Read what is stored and start nothing: no fetch, no refresh (django-cacheback's
   * raw_get). FRESH/STALE with the data, or MISS; fetchOnMiss is ignored. */
  peek?: boolean;
}

function getRequest(job: string, args: Uint8Array, read: ReadOptions): GetRequest {
  const request: GetRequest = { job, args };
  if (read.fetchOnMiss !== undefined) request.fetchOnMiss = read.fetchOnMiss;
  if (read.peek) request.peek = true;
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
    hit ? reply.data : null,
    fromTimestamp(reply.storedAt),
    fromTimestamp(reply.expiresAt),
    reply.refreshScheduled,
    reply.fetched,
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

/**
 * A connection to cachebackd.
 *
 * `url` is `http://host:port`, `host:port` or `unix:/path/to.sock`; without one,
 * `$CACHEBACKD_URL`, else `http://127.0.0.1:7070`. The channel connects on first use and
 * reconnects by itself; share one client per process (jobs and workers take it).
 */
export class Client {
  /** What the channel dials (grpc-js's form of the URL). */
  readonly target: string;
  /** The generated stub, for the RPCs this class does not wrap. */
  readonly stub: CachebackClient;
  readonly timeout: number | undefined;
  private readonly token: string | undefined;
  private readonly credentials: grpc.ChannelCredentials;

  constructor(url?: string, options: ClientOptions = {}) {
    const { target, https } = resolveTarget(url);
    this.target = target;
    this.timeout = options.timeout;
    this.token = options.token || process.env[TOKEN_ENV] || undefined;
    const fromEnv = options.tls === true || (options.tls === undefined && https);
    const tls = typeof options.tls === "object" ? options.tls : fromEnv ? tlsFromEnv() : undefined;
    checkPlaintextToken(target, this.token, tls !== undefined, options.allowPlaintextToken ?? false);
    const security = channelSecurity(tls);
    this.credentials = security.credentials;
    const Cacheback = cachebackV1().Cacheback;
    this.stub = new Cacheback(this.target, this.credentials, {
      ...CHANNEL_OPTIONS,
      ...security.options,
      ...options.channelOptions,
    });
  }

  /** Closes the channel; calls in flight fail with CANCELLED. */
  close(): void {
    this.stub.close();
  }

  /** Resolves once the channel is connected; rejects after `timeout` seconds. */
  waitForReady(timeout: number): Promise<void> {
    return new Promise((resolve, reject) => {
      this.stub.waitForReady(Date.now() + timeout * 1000, (error) => (error ? reject(error) : resolve()));
    });
  }

  /** Metadata and call options of one call (the worker's stream uses them too). */
  callOptions(timeout: number | undefined): { metadata: grpc.Metadata; options: grpc.CallOptions } {
    const options: grpc.CallOptions = {};
    if (timeout !== undefined) options.deadline = Date.now() + timeout * 1000;
    const metadata = new grpc.Metadata();
    if (this.token) metadata.set("authorization", `Bearer ${this.token}`);
    return { metadata, options };
  }

  private call<Res>(method: Unary<Res>, options: CallOptions): Promise<Res> {
    const { metadata, options: call } = this.callOptions("timeout" in options ? options.timeout : this.timeout);
    return new Promise((resolve, reject) => {
      method(metadata, call, (error, reply) => {
        if (error || reply === undefined) reject(CachebackError.from(error));
        else resolve(reply);
      });
    });
  }

  /** Reads an item; on a miss or a stale hit the daemon refreshes it as the job says
   * (unless `peek`). */
  async get(job: string, args: Uint8Array, options: CallOptions & ReadOptions = {}): Promise<Item<Buffer>> {
    const request = getRequest(job, args, options);
    const reply = await this.call<GetResponse__Output>((m, o, cb) => this.stub.Get(request, m, o, cb), options);
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
      const reply = await this.call<GetManyResponse__Output>((m, o, cb) => this.stub.GetMany({ requests }, m, o, cb), options);
      for (const result of reply.results) {
        if (result.response) results.push(itemFromReply(result.response));
        else results.push(itemError(result.error?.code ?? grpc.status.UNKNOWN, result.error?.message ?? ""));
      }
    }
    return results;
  }

  /** Stores data for an item; resolves to when it stops being fresh. `lifetime`
   * (seconds) replaces the job's lifetime for this item only. */
  async set(
    job: string,
    args: Uint8Array,
    data: Uint8Array,
    options: CallOptions & { lifetime?: number } = {},
  ): Promise<Date> {
    const request = { job, args, data, ...(options.lifetime === undefined ? {} : { lifetime: toDuration(options.lifetime, "lifetime") }) };
    const reply = await this.call<SetResponse__Output>((m, o, cb) => this.stub.Set(request, m, o, cb), options);
    return fromTimestamp(reply.expiresAt) ?? new Date(0);
  }

  /** Marks an item stale now and schedules a refresh; the stale data is served meanwhile. */
  async invalidate(job: string, args: Uint8Array, options: CallOptions = {}): Promise<Invalidated> {
    const reply = await this.call<InvalidateResponse__Output>((m, o, cb) => this.stub.Invalidate({ job, args }, m, o, cb), options);
    return { found: reply.found, refreshScheduled: reply.refreshScheduled };
  }

  /** Every job the daemon knows, with how many worker streams serve it now
   * (CachebackAdmin.ListJobs, on this client's channel). */
  async workers(options: CallOptions = {}): Promise<Map<string, number>> {
    const Admin = cachebackV1().CachebackAdmin;
    const admin = new Admin(this.target, this.credentials, { channelOverride: this.stub.getChannel() });
    const reply = await this.call<ListJobsResponse__Output>((m, o, cb) => admin.ListJobs({}, m, o, cb), options);
    return new Map(reply.jobs.map((job) => [job.name, job.workers]));
  }

  /** Removes an item, so that the next Get is a miss; resolves to whether it existed. */
  async delete(job: string, args: Uint8Array, options: CallOptions = {}): Promise<boolean> {
    const reply = await this.call<DeleteResponse__Output>((m, o, cb) => this.stub.Delete({ job, args }, m, o, cb), options);
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

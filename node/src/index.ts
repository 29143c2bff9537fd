/**
 * cachebackd: serve cached data at once and refresh it in the background.
 *
 * The Node.js client and worker of the cachebackd daemon, with django-cacheback's API:
 *
 * ```ts
 * import { Job, Worker } from "cachebackd";
 *
 * class UserTweets extends Job<[string], string[]> {
 *   name = "tweets.UserTweets";
 *   lifetime = 600;
 *   async fetch(username: string) { return slowFetch(username); }
 * }
 *
 * new Worker().serve(UserTweets).start();             // in the app server: runs fetches for the daemon
 * const tweets = await new UserTweets().get("bob");   // anywhere: cached data at once
 * ```
 *
 * The daemon is found at `$CACHEBACKD_URL` (`http://host:port`, `host:port` or
 * `unix:/path`; several separated by commas for a fleet), else `http://127.0.0.1:7070`.
 */

export {
  Client,
  DEFAULT_URL,
  GET_MANY_LIMIT,
  MAX_MESSAGE_BYTES,
  Item,
  TOKEN_ENV,
  URL_ENV,
  defaultClient,
  resolveTarget,
  resolveUrls,
  setDefaultClient,
  type CallOptions,
  type ClientOptions,
  type Invalidated,
  type ItemState,
  type ReadOptions,
} from "./client";
export { decodeArgs, decodeJson, encodeArgs, encodeJson } from "./codec";
export { CachebackError, FetchFailed, NoDaemonError } from "./errors";
export { MAX_NEAR_CACHE_ITEMS, type NearCacheStats } from "./near";
export { TLS_CA_ENV, TLS_CERT_ENV, TLS_KEY_ENV, isLocal, tlsFromEnv, type TlsOptions } from "./security";
export {
  FunctionJob,
  Job,
  NAME_PATTERN,
  cacheback,
  validateName,
  type CachebackOptions,
  type CachedFunction,
  type FetchOutcome,
  type JobReader,
  type JobReadOptions,
} from "./job";
export { ABANDONED, Worker, type AnswerRefused, type Logger, type Servable, type WorkerOptions } from "./worker";
export * as wire from "./wire";
export { Absent, Fetched, NotModified, fetchContext, type FetchContext, type FetchReason, type FetchedOptions } from "./outcomes";

/**
 * `Worker`: answers the daemon's fetch requests for any number of jobs.
 *
 * One RegisterJob stream per job: the worker registers the job's config, then runs each
 * FetchRequest (at most the job's maxInFlight at once: the daemon never sends more
 * unanswered) and sends back the data or, if `fetch` threw, a FetchError with the
 * error's message. When a stream breaks (the daemon restarted, the connection dropped)
 * the worker registers again after an exponential backoff with jitter, so that a fleet
 * of app servers does not reconnect in lockstep. `stop()` lets the fetches already
 * running finish and deliver their results, then half-closes the streams; requests that
 * arrive after that are left unanswered, and the daemon hands them to another worker
 * when the stream ends. An answer the daemon refuses (too large for its budget of answers
 * in flight, a field out of bounds) is logged as a warning, counted in `refused` and passed
 * to the `onRefused` option; the stream goes on.
 */

import * as grpc from "@grpc/grpc-js";
import { EventEmitter } from "node:events";
import { hostname } from "node:os";
import { setTimeout as sleep } from "node:timers/promises";
import { debuglog } from "node:util";

import { Client, defaultClient } from "./client";
import { decodeArgs } from "./codec";
import { Job, type CachedFunction } from "./job";
import { Absent, Fetched, NotModified, withFetchContext, type FetchReason } from "./outcomes";
import type {
  AnswerRefused__Output,
  CachebackClient,
  DaemonMessage__Output,
  FetchRequest__Output,
  FetchResult,
  JobConfig__Output,
  WorkerMessage,
} from "./proto";
import { fromTimestamp, toDuration } from "./time";
import { RECONNECT_MAX_MILLIS, RECONNECT_MIN_MILLIS } from "./wire";

/** What `Worker.serve` takes: a Job, a Job subclass with a no-argument constructor, or a
 * `cacheback()` function. */
export type Servable = Job<any, any> | (new () => Job<any, any>) | CachedFunction<any, any>;

/** Where the worker says what happens to its streams. The default logs warnings and
 * errors to the console and the rest through `NODE_DEBUG=cachebackd`. */
export interface Logger {
  debug(message: string): void;
  info(message: string): void;
  warn(message: string): void;
}

const debug = debuglog("cachebackd");
const DEFAULT_LOGGER: Logger = { debug, info: debug, warn: (m) => console.warn(`cachebackd: ${m}`) };

export interface WorkerOptions {
  /** Default: the process-wide client (`$CACHEBACKD_URL`). */
  client?: Client;
  /** Reported to the daemon; default `node-<host>-<pid>`. */
  name?: string;
  /** First wait before reconnecting, in seconds (default 0.1); doubles up to `reconnectMax`
   * (default 10), each wait drawn between half and all of that. */
  reconnectInitial?: number;
  reconnectMax?: number;
  /** How long `stop()` waits for fetches in flight and the streams' end, in seconds (default 10). */
  stopGrace?: number;
  logger?: Logger;
  /** Called with every answer the daemon refuses (see `AnswerRefused`). */
  onRefused?: (refused: AnswerRefused) => void;
}

/** The daemon refused one of this worker's answers and said why: its fetch failed (the
 * callers waiting for it got `code` with `reason`) and nothing was stored; the stream
 * stays open. It happens when answers being received at once are past the daemon's
 * `max_answer_bytes`, or when the answer breaks a limit (data over `max_data_bytes`, a
 * validator over 256 bytes, a bad tag). */
export interface AnswerRefused {
  /** The job the answer was for. */
  job: string;
  /** The FetchRequest the answer was for; empty if the daemon could not read it. */
  requestId: string;
  /** The status the fetch failed with for its callers (`grpc.status.UNAVAILABLE`). */
  code: grpc.status;
  /** Why, in the daemon's words (naming the limit). */
  reason: string;
}

/** The longest refusal reason written to the log, in characters. */
const LOGGED_REASON = 512;

function asJob(servable: Servable): Job<any, any> {
  if (servable instanceof Job) return servable;
  if (typeof servable === "function" && "job" in servable && servable.job instanceof Job) return servable.job;
  if (typeof servable === "function" && servable.prototype instanceof Job) {
    return new (servable as new () => Job<any, any>)();
  }
  throw new TypeError(`cannot serve ${String(servable)}: expected a Job, a Job subclass or a cacheback() function`);
}

/** Why an abandoned fetch failed (the Rust worker's words). */
export const ABANDONED = "fetch still running at its deadline: abandoned";

/** The longest delay setTimeout takes (a 32-bit signed count of milliseconds). */
const MAX_TIMER_MS = 2 ** 31 - 1;

/** `value`, or a rejection with ABANDONED once `deadline` passes. */
async function beforeDeadline<T>(value: T | Promise<T>, deadline: Date | null): Promise<T> {
  const left = deadline === null ? Infinity : Math.max(deadline.getTime() - Date.now(), 0);
  if (left > MAX_TIMER_MS) return value; // setTimeout would fire at once past ~24.8 days
  let timer: NodeJS.Timeout | undefined;
  const expired = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Abandoned()), left);
  });
  try {
    return await Promise.race([Promise.resolve(value), expired]);
  } finally {
    clearTimeout(timer);
  }
}

class Abandoned extends Error {
  constructor() {
    super(ABANDONED);
  }
}

/** The FetchError message for what `fetch` threw. */
export function describe(error: unknown): string {
  if (error instanceof Abandoned) return ABANDONED;
  if (error instanceof Error) return error.message ? `${error.name}: ${error.message}` : error.name;
  return String(error);
}

/**
 * Serves jobs to the daemon from the app server, like cacheback's Celery workers.
 *
 * ```ts
 * const worker = new Worker().serve(UserTweets).serve(fetchTweets).start();
 * await worker.ready();
 * ...
 * await worker.stop();   // finishes the fetches running, delivers them, closes the streams
 * ```
 */
export class Worker {
  readonly client: Client;
  readonly name: string;
  private readonly reconnectInitial: number;
  private readonly reconnectMax: number;
  private readonly stopGrace: number;
  readonly logger: Logger;
  private readonly onRefused: ((refused: AnswerRefused) => void) | undefined;
  /** Per job, one stream per daemon of the client (each daemon of a fleet dispatches only
   * to the workers registered with it). */
  private readonly streams = new Map<string, JobStream[]>();
  private readonly stopping = new AbortController();
  /** Emits "change" whenever a registration, a fetch's end or a stream's end happens. */
  private readonly changes = new EventEmitter();
  private started = false;
  private loops: Promise<void>[] = [];
  private registrationCount = 0;
  private refusedCount = 0;

  constructor(options: WorkerOptions = {}) {
    this.client = options.client ?? defaultClient();
    this.name = options.name ?? `node-${hostname()}-${process.pid}`;
    this.reconnectInitial = options.reconnectInitial ?? RECONNECT_MIN_MILLIS / 1000;
    this.reconnectMax = options.reconnectMax ?? RECONNECT_MAX_MILLIS / 1000;
    this.stopGrace = options.stopGrace ?? 10;
    this.logger = options.logger ?? DEFAULT_LOGGER;
    this.onRefused = options.onRefused;
    this.changes.setMaxListeners(0);
  }

  /** Adds a job; chainable. `maxInFlight` defaults to the job's own (16). */
  serve(servable: Servable, options: { maxInFlight?: number } = {}): this {
    const job = asJob(servable);
    job.config(); // refuse here a config the daemon would refuse at every reconnection
    const limit = options.maxInFlight ?? job.maxInFlight;
    if (!Number.isInteger(limit) || limit < 1) throw new RangeError(`maxInFlight must be a positive integer, got ${limit}`);
    if (this.streams.has(job.name)) throw new Error(`job ${job.name} is already served by this worker`);
    const streams = this.client.stubs.map(({ target, stub }) => new JobStream(this, job, limit, target, stub));
    this.streams.set(job.name, streams);
    if (this.started) this.loops.push(...streams.map((s) => s.run()));
    return this;
  }

  /** The names of the jobs served. */
  get jobs(): string[] {
    return [...this.streams.keys()];
  }

  /** How many times the daemon has confirmed a registration (any job), reconnections included. */
  get registrations(): number {
    return this.registrationCount;
  }

  /** How many of this worker's answers the daemon has refused (any job); see `AnswerRefused`. */
  get refused(): number {
    return this.refusedCount;
  }

  /** The job's config as a daemon last confirmed it, defaults filled in. */
  effectiveConfig(job: string): JobConfig__Output | null {
    return this.streams.get(job)?.find((s) => s.config !== null)?.config ?? null;
  }

  private allStreams(): JobStream[] {
    return [...this.streams.values()].flat();
  }

  /** Opens the streams and returns at once. */
  start(): this {
    if (this.stopping.signal.aborted) throw new Error("a stopped worker cannot be started again");
    if (!this.started) {
      this.started = true;
      this.loops = this.allStreams().map((s) => s.run());
    }
    return this;
  }

  /** Resolves once every job is registered on a live stream (with several daemons: with
   * every one), or, with `count`, once
   * `registrations` reaches it (to wait for a reconnection). Rejects after `timeout` seconds. */
  ready(options: { timeout?: number; count?: number } = {}): Promise<void> {
    const { count } = options;
    return this.until(
      () =>
        count === undefined
          ? this.streams.size > 0 && this.allStreams().every((s) => s.registered)
          : this.registrationCount >= count,
      options.timeout ?? 30,
      "registration",
    );
  }

  /** Starts, and stops gracefully on SIGINT or SIGTERM: for a dedicated worker process. */
  async run(): Promise<void> {
    this.start();
    await new Promise<void>((resolve) => {
      const onSignal = () => {
        process.off("SIGINT", onSignal).off("SIGTERM", onSignal);
        resolve();
      };
      process.on("SIGINT", onSignal).on("SIGTERM", onSignal);
    });
    await this.stop();
  }

  /** Stops gracefully: no new fetches, the fetches running finish and their results are
   * sent, then the streams are half-closed and their end awaited. After `grace` seconds
   * (default `stopGrace`) whatever is left is cut. */
  async stop(grace = this.stopGrace): Promise<void> {
    const deadline = Date.now() + grace * 1000;
    const left = () => Math.max(deadline - Date.now(), 0) / 1000;
    this.stopping.abort();
    const streams = this.allStreams();
    await this.until(() => streams.every((s) => s.inFlight === 0), left(), "fetches in flight").catch(() => {});
    for (const stream of streams) stream.halfClose();
    await this.until(() => streams.every((s) => s.call === undefined), left(), "streams to end").catch(() => {});
    for (const stream of streams) stream.call?.cancel();
    await Promise.all(this.loops);
  }

  /** @internal */
  get stopSignal(): AbortSignal {
    return this.stopping.signal;
  }

  /** @internal */
  changed(registered = false): void {
    if (registered) this.registrationCount++;
    this.changes.emit("change");
  }

  /** @internal The daemon refused an answer of `job`'s: logged, counted, handed to the app. */
  refusedAnswer(job: string, notice: AnswerRefused__Output): void {
    const refused: AnswerRefused = { job, requestId: notice.requestId, code: notice.code, reason: notice.reason };
    const code = grpc.status[refused.code] ?? String(refused.code);
    this.logger.warn(`job ${job}: the daemon refused the answer to ${refused.requestId} (${code}): ${refused.reason.slice(0, LOGGED_REASON)}`);
    this.refusedCount++;
    try {
      this.onRefused?.(refused);
    } catch (error) {
      this.logger.warn(`job ${job}: onRefused threw: ${describe(error)}`);
    }
    this.changes.emit("change");
  }

  /** @internal Reconnection backoff bounds, in seconds. */
  get backoff(): { initial: number; max: number } {
    return { initial: this.reconnectInitial, max: this.reconnectMax };
  }

  private until(done: () => boolean, timeout: number, what: string): Promise<void> {
    if (done()) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const check = () => {
        if (!done()) return;
        cleanup();
        resolve();
      };
      const timer = setTimeout(() => {
        cleanup();
        reject(new Error(`worker ${this.name}: timed out after ${timeout}s waiting for ${what}`));
      }, timeout * 1000);
      const cleanup = () => {
        clearTimeout(timer);
        this.changes.off("change", check);
      };
      this.changes.on("change", check);
    });
  }
}

/** One job's RegisterJob stream to one daemon, reconnected until the worker stops. */
class JobStream {
  registered = false;
  config: JobConfig__Output | null = null;
  inFlight = 0;
  call: grpc.ClientDuplexStream<WorkerMessage, DaemonMessage__Output> | undefined;

  constructor(
    private readonly worker: Worker,
    private readonly job: Job<any, any>,
    private readonly maxInFlight: number,
    private readonly target: string,
    private readonly stub: CachebackClient,
  ) {}

  async run(): Promise<void> {
    const { initial, max } = this.worker.backoff;
    let delay = initial;
    const signal = this.worker.stopSignal;
    while (!signal.aborted) {
      const registered = await this.session();
      if (signal.aborted) break;
      if (registered) delay = initial;
      const pause = delay / 2 + (Math.random() * delay) / 2;
      this.worker.logger.info(`job ${this.job.name} at ${this.target}: stream ended; reconnecting in ${pause.toFixed(2)}s`);
      await sleep(pause * 1000, undefined, { signal }).catch(() => {});
      delay = Math.min(delay * 2, max);
    }
  }

  /** Ends the outgoing side after the results already written; the daemon then ends the stream. */
  halfClose(): void {
    this.call?.end();
  }

  /** One RegisterJob call, until it ends; resolves to whether it got registered. */
  private session(): Promise<boolean> {
    const { metadata, options } = this.worker.client.callOptions(undefined);
    const call = this.stub.RegisterJob(metadata, options);
    this.call = call;
    let registered = false;
    return new Promise((resolve) => {
      let ended = false;
      const end = () => {
        if (ended) return;
        ended = true;
        this.registered = false;
        this.call = undefined;
        this.worker.changed();
        resolve(registered);
      };
      call.on("data", (message: DaemonMessage__Output) => {
        if (message.kind === "registered" && message.registered) {
          registered = true;
          this.registered = true;
          this.config = message.registered.config;
          this.worker.logger.info(
            `job ${this.job.name}: registered as worker ${message.registered.workerId} (maxInFlight ${this.maxInFlight})`,
          );
          this.worker.changed(true);
        } else if (message.kind === "fetch" && message.fetch) {
          this.dispatch(call, [message.fetch], () => ended);
        } else if (message.kind === "batch" && message.batch) {
          this.dispatch(call, message.batch.fetches, () => ended);
        } else if (message.kind === "refused" && message.refused) {
          this.worker.refusedAnswer(this.job.name, message.refused);
        } // any other kind is a newer daemon's, unknown here: ignored
      });
      call.on("error", (error: grpc.ServiceError) => {
        const message = `job ${this.job.name}: stream failed: ${grpc.status[error.code]} ${error.details}`;
        if (this.worker.stopSignal.aborted) this.worker.logger.debug(message);
        else this.worker.logger.warn(message);
        end();
      });
      call.on("status", end);
      call.on("end", end);
      call.write({
        register: {
          job: this.job.name,
          config: this.job.config(),
          maxInFlight: this.maxInFlight,
          workerName: this.worker.name,
          maxBatch: this.job.maxBatch,
        },
      });
    });
  }

  /** Runs one FetchRequest, or a FetchBatch's, and writes each result as it is known.
   * Every fetch of a batch counts in flight, as on the daemon's side. */
  private dispatch(
    call: grpc.ClientDuplexStream<WorkerMessage, DaemonMessage__Output>,
    requests: FetchRequest__Output[],
    ended: () => boolean,
  ): void {
    if (this.worker.stopSignal.aborted || requests.length === 0) return; // unanswered: the daemon gives it to another worker when the stream ends
    this.inFlight += requests.length;
    const answered = requests.length === 1 ? this.answer(requests[0]).then((r) => [r]) : this.answerBatch(requests);
    void answered
      .then((results) => {
        for (const result of results) if (!ended() && call.writable) call.write({ result });
      })
      .finally(() => {
        this.inFlight -= requests.length;
        this.worker.changed();
      });
  }

  /** Runs the fetch; anything it throws becomes a FetchError, never a dead worker. A fetch
   * still running at its deadline is abandoned: the daemon has stopped waiting for it, and
   * the answer frees the slot it holds on the daemon's side (a promise cannot be
   * cancelled, so the fetch itself runs on, and its result is dropped). The fetch runs
   * inside its `fetchContext()`. */
  private async answer(request: FetchRequest__Output): Promise<FetchResult> {
    const started = Date.now();
    let args: unknown[] = [];
    let outcome: unknown;
    try {
      args = decodeArgs(request.args);
      const context = { reason: reasonOf(request.reason), validator: request.validator.length > 0 ? request.validator : null };
      outcome = await beforeDeadline(
        withFetchContext(context, () => this.job.fetch(...args)),
        fromTimestamp(request.deadline),
      );
    } catch (error) {
      outcome = new Thrown(error);
    }
    const result = this.result(request, args, outcome);
    if (!result.error) {
      this.worker.logger.debug(
        `job ${this.job.name}: fetched ${request.args.toString()} (${request.reason}) in ${Date.now() - started} ms`,
      );
    }
    return result;
  }

  /** One `fetchMany` for a batch; each outcome becomes its own result (an error for one
   * item fails that item; one from `fetchMany` itself, or a wrong count, fails all). */
  private async answerBatch(requests: FetchRequest__Output[]): Promise<FetchResult[]> {
    const results: FetchResult[] = [];
    const good: { request: FetchRequest__Output; args: unknown[] }[] = [];
    for (const request of requests) {
      try {
        good.push({ request, args: decodeArgs(request.args) });
      } catch (error) {
        results.push(this.result(request, [], new Thrown(error)));
      }
    }
    if (good.length === 0) return results;
    const deadlines = good.map((g) => fromTimestamp(g.request.deadline)).filter((d): d is Date => d !== null);
    const deadline = deadlines.length === 0 ? null : new Date(Math.min(...deadlines.map((d) => d.getTime())));
    let outcomes: unknown[];
    try {
      outcomes = await beforeDeadline(this.job.fetchMany(good.map((g) => g.args)), deadline);
      if (!Array.isArray(outcomes) || outcomes.length !== good.length) {
        throw new Error(`fetchMany answered ${Array.isArray(outcomes) ? outcomes.length : "no array"} results for ${good.length} calls`);
      }
    } catch (error) {
      outcomes = good.map(() => new Thrown(error));
    }
    good.forEach((g, i) => results.push(this.result(g.request, g.args, outcomes[i])));
    return results;
  }

  /** What a fetch came to, as its FetchResult: data (plain or `Fetched`), an `Absent`, a
   * `NotModified` (thrown or returned), or a failure (any other error, or data that does
   * not encode). */
  private result(request: FetchRequest__Output, args: unknown[], said: unknown): FetchResult {
    const requestId = request.requestId;
    const outcome = said instanceof Thrown ? said.error : said;
    try {
      if (outcome instanceof Absent) {
        const tags = outcome.tags.length > 0 ? outcome.tags : this.job.tags(...args);
        const lifetime = outcome.lifetime === undefined ? {} : { lifetime: toDuration(outcome.lifetime, "Absent lifetime") };
        return { requestId, absent: { tags: [...tags], ...lifetime } };
      }
      if (outcome instanceof NotModified) {
        const lifetime = outcome.lifetime === undefined ? {} : { lifetime: toDuration(outcome.lifetime, "NotModified lifetime") };
        return { requestId, notModified: lifetime };
      }
      if (said instanceof Thrown || outcome instanceof Error) throw outcome;
      const fetched = outcome instanceof Fetched ? outcome : new Fetched(outcome);
      const data = this.job.encode(fetched.data);
      const tags = fetched.tags.length > 0 ? fetched.tags : this.job.tags(...args);
      const lifetime = fetched.lifetime ?? this.job.itemLifetime(args);
      return {
        requestId,
        value: {
          data,
          tags: [...tags],
          ...(fetched.validator === undefined ? {} : { validator: fetched.validator }),
          ...(lifetime === undefined ? {} : { lifetime: toDuration(lifetime) }),
        },
      };
    } catch (error) {
      this.worker.logger.warn(`job ${this.job.name}: fetch ${request.args.toString()} (${request.reason}) failed: ${describe(error)}`);
      return { requestId, error: { message: describe(error) } };
    }
  }
}

/** What a fetch threw, whatever it is (a thrown string is a failure, not data). */
class Thrown {
  constructor(readonly error: unknown) {}
}

/** "FETCH_REASON_STALE" as "STALE". */
function reasonOf(reason: string): FetchReason {
  const short = reason.replace(/^FETCH_REASON_/, "");
  return short === "STALE" || short === "INVALIDATED" || short === "EARLY" ? short : "MISS";
}

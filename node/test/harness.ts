/**
 * The test harness: the real `cachebackd` binary, one daemon per test on a free port of
 * 127.0.0.1 (or a Unix socket) with a temp data dir, stopped with SIGTERM and required to
 * exit 0.
 *
 * The binary is `$CACHEBACKD_BIN` if set (run-tests.sh builds it once), else built with
 * `cargo build -p cachebackd --bin cachebackd` from the repository root. Waiting is on
 * signals (a registration, a response, an exit) with the generous cap WAIT; polling only
 * where time passing is the point.
 */

import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, openSync, readFileSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";

import { Client, Worker, type ClientOptions, type Job, type Logger } from "../src";

/** The repository root (this file runs from node/dist/test). */
export const REPO = resolve(__dirname, "..", "..", "..");
/** The generous cap on anything a test waits for, in seconds. */
export const WAIT = 30;

let built: string | undefined;

function cargoTarget(): string {
  return process.env.CARGO_TARGET_DIR ?? join(REPO, "target");
}

/** The daemon binary, built once per test process unless CACHEBACKD_BIN names one. */
export function daemonBin(): string {
  if (process.env.CACHEBACKD_BIN) return process.env.CACHEBACKD_BIN;
  if (built === undefined) {
    execFileSync("cargo", ["build", "-p", "cachebackd", "--bin", "cachebackd"], { cwd: REPO, stdio: "inherit" });
    built = join(cargoTarget(), "debug", "cachebackd");
  }
  return built;
}

/** The Rust client's examples (`user_tweets`, `read_tweets`), built unless CACHEBACK_RUST_EXAMPLES names their folder. */
export function rustExamples(): string {
  if (process.env.CACHEBACK_RUST_EXAMPLES) return process.env.CACHEBACK_RUST_EXAMPLES;
  execFileSync("cargo", ["build", "-p", "cacheback", "--example", "user_tweets", "--example", "read_tweets"], {
    cwd: REPO,
    stdio: "inherit",
  });
  return join(cargoTarget(), "debug", "examples");
}

/** A free TCP port on 127.0.0.1. */
export async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((ok) => server.listen(0, "127.0.0.1", ok));
  const port = (server.address() as { port: number }).port;
  await new Promise<void>((ok) => server.close(() => ok()));
  return port;
}

/** One cachebackd process; `restart` keeps its data dir and address. */
export class Daemon {
  private proc: ChildProcess | undefined;
  private exited: Promise<number> | undefined;
  /** Killed by the test (SIGKILL): not expected to exit cleanly. */
  private killed = false;

  private constructor(
    readonly listen: string,
    readonly dir: string,
    private readonly args: string[],
    /** How the readiness probe connects (TLS for a TLS daemon). */
    private readonly probeOptions: ClientOptions,
  ) {}

  /** Starts a daemon on `listen` (default: a free port of 127.0.0.1) and waits until it answers. */
  static async start(options: { listen?: string; args?: string[]; probe?: ClientOptions } = {}): Promise<Daemon> {
    const dir = mkdtempSync(join(tmpdir(), "cachebackd-node-"));
    const daemon = new Daemon(options.listen ?? `127.0.0.1:${await freePort()}`, dir, options.args ?? [], options.probe ?? {});
    await daemon.spawn();
    return daemon;
  }

  /** The URL the clients take. */
  get url(): string {
    return this.listen.startsWith("unix:") ? this.listen : `http://${this.listen}`;
  }

  get log(): string {
    return readFileSync(join(this.dir, "cachebackd.log"), "utf8");
  }

  private async spawn(): Promise<void> {
    const log = openSync(join(this.dir, "cachebackd.log"), "a");
    const proc = spawn(daemonBin(), ["--listen", this.listen, "--data-dir", join(this.dir, "data"), ...this.args], {
      stdio: ["ignore", log, log],
      env: { ...process.env, RUST_LOG: process.env.RUST_LOG ?? "info" },
    });
    this.proc = proc;
    this.exited = new Promise((ok) => proc.on("exit", (code, signal) => ok(code ?? (signal ? 128 : -1))));
    const probe = new Client(this.url, this.probeOptions);
    try {
      await probe.waitForReady(WAIT);
    } catch (error) {
      proc.kill("SIGKILL");
      throw new Error(`cachebackd did not come up: ${String(error)}; log:\n${this.log}`);
    } finally {
      probe.close();
    }
  }

  /** SIGTERM and wait: the daemon's graceful stop. Resolves to its exit code. */
  async stop(): Promise<number> {
    if (this.proc === undefined || this.exited === undefined) return 0;
    if (this.proc.exitCode === null && this.proc.signalCode === null) this.proc.kill("SIGTERM");
    const timer = new AbortController();
    const code = await Promise.race([
      this.exited,
      sleep(WAIT * 1000, -1, { signal: timer.signal }).catch(() => -1),
    ]);
    timer.abort();
    if (code === -1) this.proc.kill("SIGKILL");
    return code;
  }

  /** SIGKILL by pid and wait for the exit: a daemon that dies. */
  async kill(): Promise<void> {
    if (this.proc === undefined || this.exited === undefined) return;
    this.killed = true;
    this.proc.kill("SIGKILL");
    await this.exited;
  }

  /** Starts again on the same address and data dir after `kill`. */
  async startAgain(): Promise<void> {
    this.killed = false;
    await this.spawn();
  }

  async restart(): Promise<void> {
    const code = await this.stop();
    if (code !== 0) throw new Error(`cachebackd exited with ${code}; log:\n${this.log}`);
    await this.spawn();
  }

  /** Stops the daemon, requires exit 0, and removes its directory. */
  async close(): Promise<void> {
    const code = await this.stop();
    if (code !== 0 && !this.killed) throw new Error(`cachebackd exited with ${code}; log:\n${this.log}`);
    rmSync(this.dir, { recursive: true, force: true });
  }

  /** The daemon's view of its jobs (CachebackAdmin.ListJobs): name → workers connected. */
  async workers(): Promise<Map<string, number>> {
    const client = new Client(this.url, { timeout: WAIT });
    try {
      return await client.workers();
    } finally {
      client.close();
    }
  }
}

/** A logger that keeps what the worker says, for tests whose fetches fail on purpose. */
export function quietLogger(): Logger & { lines: string[] } {
  const lines: string[] = [];
  const keep = (m: string) => void lines.push(m);
  return { lines, debug: keep, info: keep, warn: keep };
}

/** Per test: a daemon, a client on it, and workers that are stopped at the end. */
export class Fixture {
  readonly workers: Worker[] = [];

  private constructor(
    readonly daemon: Daemon,
    readonly client: Client,
  ) {}

  static async start(options: { listen?: string; args?: string[] } = {}): Promise<Fixture> {
    const daemon = await Daemon.start(options);
    return new Fixture(daemon, new Client(daemon.url, { timeout: WAIT }));
  }

  /** A started worker serving `jobs`, registered before it is returned. */
  async worker(jobs: Job<any, any>[], options: { maxInFlight?: number } = {}): Promise<Worker> {
    const worker = new Worker({ client: this.client, logger: quietLogger() });
    for (const job of jobs) worker.serve(job, options);
    this.workers.push(worker.start());
    await worker.ready({ timeout: WAIT });
    return worker;
  }

  async close(): Promise<void> {
    await Promise.all(this.workers.map((w) => w.stop()));
    this.client.close();
    await this.daemon.close();
  }
}

/** A promise with its resolve at hand: what a test awaits as a signal. */
export function signal<T = void>(): { promise: Promise<T>; resolve: (value: T) => void } {
  let resolve!: (value: T) => void;
  const promise = new Promise<T>((ok) => (resolve = ok));
  return { promise, resolve };
}

/** Polls `check` until it returns a value other than undefined, for at most WAIT seconds:
 * for what lands in the background. */
export async function eventually<T>(check: () => Promise<T | undefined>, what: string): Promise<T> {
  const deadline = Date.now() + WAIT * 1000;
  for (;;) {
    const value = await check();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${WAIT}s waiting for ${what}`);
    await sleep(50);
  }
}

/**
 * The near cache: FRESH items served inside this process, kept true by the daemon's
 * `Subscribe` stream (PROTOCOL.md, "Near cache"). The same rules as the Rust and Python
 * clients' (client/src/near.rs, python/cachebackd/_near.py):
 *
 * - it holds only items a Get answered FRESH, serves each while `now < expires_at` and no
 *   event has come for it, and drops it on any event;
 * - one stream is kept open; while it is down nothing is served or kept, and losing it (or
 *   a RESET) drops everything;
 * - a reader subscribes before the Get whose answer it may keep, and keeps the answer
 *   unless an event told of a change after that data was stored (a CHANGED event is at its
 *   data's `stored_at`, so the event of the fetch a Get waited for does not spoil it);
 * - subscriptions are pruned in bulk once they outnumber what is held, never past the
 *   daemon's 100,000 per stream;
 * - with several daemons the stream is on the one the client uses; when the client fails
 *   over (or the stream finds that daemon down, which moves the client too) everything
 *   held goes, and a new stream opens on the next daemon.
 *
 * The bound is a Map used as an LRU (insertion order, a hit moves the item to the end):
 * a few lines, where a package would add a dependency for no gain.
 */

import type * as grpc from "@grpc/grpc-js";

import type { GetResponse__Output } from "./proto";
import type { ItemEvent__Output } from "./generated/cacheback/v1/ItemEvent";
import type { ItemRef } from "./generated/cacheback/v1/ItemRef";
import type { SubscribeRequest } from "./generated/cacheback/v1/SubscribeRequest";
import type { Timestamp__Output } from "./generated/google/protobuf/Timestamp";

/** The most items a near cache may hold (room is left for reads in flight under the
 * daemon's 100,000 subscriptions per stream). */
export const MAX_NEAR_CACHE_ITEMS = 90_000;
const MAX_SUBSCRIBED = 100_000;

/** How a client's near cache has been used since the client was made. */
export interface NearCacheStats {
  /** Reads answered in this process, never seen by the daemon. */
  readonly hits: number;
  /** Reads that went to the daemon. */
  readonly misses: number;
  /** Items held now. */
  readonly items: number;
  /** Times the stream was lost (or reset) and everything dropped. */
  readonly resets: number;
}

/** One FRESH item as a Get answered it (times in seconds since the epoch). */
export interface NearItem {
  readonly reply: GetResponse__Output;
  readonly storedAt: number;
  readonly expiresAt: number;
}

/** A read that may be kept: the stream it began on. */
export interface Ticket {
  readonly key: string;
  readonly generation: number;
}

/** What the near cache needs of its client: the daemon in use, and moving on from it. */
export interface DaemonSource {
  /** The index of the daemon in use, and how many moves the client has made so far. */
  current(): { index: number; moves: number };
  /** How many daemons there are. */
  readonly count: number;
  /** Opens a Subscribe stream on the daemon at `index`. */
  subscribe(index: number): grpc.ClientDuplexStream<SubscribeRequest, ItemEvent__Output>;
  /** The daemon at `index` is down: move to the next if it is still the one in use. */
  failOver(index: number): void;
  /** Whether a failed call found its daemon down (not a status it answered). */
  isDown(status: grpc.StatusObject): boolean;
}

function seconds(ts: Timestamp__Output | null | undefined): number | undefined {
  if (!ts) return undefined;
  return Number(ts.seconds) + ts.nanos / 1e9;
}

/** What may be kept of a Get's answer: FRESH data with both times. */
export function nearItem(reply: GetResponse__Output): NearItem | undefined {
  if (reply.state !== "ITEM_STATE_FRESH") return undefined;
  const storedAt = seconds(reply.storedAt);
  const expiresAt = seconds(reply.expiresAt);
  if (storedAt === undefined || expiresAt === undefined) return undefined;
  return { reply, storedAt, expiresAt };
}

/** The daemon's own key layout: job, 0x00, args (as a string of bytes: latin1 maps each
 * byte to one character and back). */
export function keyOf(job: string, args: Uint8Array): string {
  return `${job}\0${Buffer.from(args.buffer, args.byteOffset, args.byteLength).toString("latin1")}`;
}

function itemRef(key: string): ItemRef {
  const split = key.indexOf("\0");
  return { job: key.slice(0, split), args: Buffer.from(key.slice(split + 1), "latin1") };
}

/** A subscribed item: reads of it in flight, and the bound its events set (data stored
 * before `spoiledBefore` is out of date). */
class Held {
  reading = 0;
  spoiledBefore: number | undefined;

  spoil(before: number): void {
    if (this.spoiledBefore === undefined || before > this.spoiledBefore) this.spoiledBefore = before;
  }
}

const now = (): number => Date.now() / 1000;

/** The near cache of one `Client`. */
export class NearCache {
  readonly capacity: number;
  private readonly items = new Map<string, NearItem>();
  private readonly subscribed = new Map<string, Held>();
  /** The stream in use, while it is up. */
  private live: grpc.ClientDuplexStream<SubscribeRequest, ItemEvent__Output> | undefined;
  /** The stream being opened or in use. */
  private call: grpc.ClientDuplexStream<SubscribeRequest, ItemEvent__Output> | undefined;
  /** Bumped at every loss of the stream: a read that began before is not kept. */
  private generation = 0;
  private hits = 0;
  private misses = 0;
  private resets = 0;
  private closed = false;
  private delay = 50;
  private downInARow = 0;
  private timer: NodeJS.Timeout | undefined;
  private readonly waiters: (() => void)[] = [];

  constructor(
    private readonly daemons: DaemonSource,
    capacity: number,
  ) {
    if (!Number.isInteger(capacity) || capacity < 1) {
      throw new RangeError(`nearCache needs a capacity of at least 1, got ${capacity}`);
    }
    this.capacity = Math.min(capacity, MAX_NEAR_CACHE_ITEMS);
    this.open();
  }

  /** The item if it may be served locally now; counts the hit or the miss. */
  lookup(key: string): NearItem | undefined {
    let item = this.live ? this.items.get(key) : undefined;
    if (item !== undefined && now() >= item.expiresAt) {
      this.items.delete(key);
      item = undefined;
    }
    if (item === undefined) {
      this.misses++;
      return undefined;
    }
    this.items.delete(key);
    this.items.set(key, item);
    this.hits++;
    return item;
  }

  /** Before a Get whose answer may be kept: subscribes to the item. Undefined while the
   * stream is down or full (the read then just goes to the daemon). */
  begin(key: string): Ticket | undefined {
    const live = this.live;
    if (live === undefined) return undefined;
    let held = this.subscribed.get(key);
    if (held === undefined) {
      if (this.subscribed.size >= this.capacity + Math.floor(this.capacity / 8) + 64) this.prune(live);
      if (this.subscribed.size >= MAX_SUBSCRIBED) return undefined;
      live.write({ add: [itemRef(key)] });
      held = new Held();
      this.subscribed.set(key, held);
    }
    held.reading++;
    return { key, generation: this.generation };
  }

  /** After that Get: keeps `item` (FRESH) unless it was spoiled meanwhile. */
  finish(ticket: Ticket, item: NearItem | undefined): void {
    const held = this.subscribed.get(ticket.key);
    if (held === undefined) return;
    held.reading--;
    if (item === undefined || ticket.generation !== this.generation) return;
    if (held.spoiledBefore !== undefined && item.storedAt < held.spoiledBefore) return;
    if (now() >= item.expiresAt) return;
    this.items.delete(ticket.key);
    this.items.set(ticket.key, item);
    while (this.items.size > this.capacity) {
      const oldest = this.items.keys().next().value as string;
      this.items.delete(oldest);
    }
  }

  /** This client writes the item: its local copy goes now (the event follows). */
  forget(key: string): void {
    this.subscribed.get(key)?.spoil(now());
    this.items.delete(key);
  }

  stats(): NearCacheStats {
    const t = now();
    for (const [key, item] of this.items) if (t >= item.expiresAt) this.items.delete(key);
    return { hits: this.hits, misses: this.misses, items: this.items.size, resets: this.resets };
  }

  /** Resolves once the stream is up (at once if it is); rejects after `timeout` seconds. */
  ready(timeout: number): Promise<void> {
    if (this.live) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`near cache: no Subscribe stream after ${timeout}s`)), timeout * 1000);
      this.waiters.push(() => {
        clearTimeout(timer);
        resolve();
      });
    });
  }

  /** The client left the daemon the stream is on: everything held goes now, and a
   * stream opens on the next daemon. */
  lostDaemon(): void {
    this.dropAll();
    const call = this.call;
    this.call = undefined;
    call?.cancel();
    this.delay = 50;
    this.schedule(0);
  }

  close(): void {
    this.closed = true;
    if (this.timer) clearTimeout(this.timer);
    this.dropAll();
    this.call?.cancel();
    this.call = undefined;
  }

  private prune(live: grpc.ClientDuplexStream<SubscribeRequest, ItemEvent__Output>): void {
    const gone: string[] = [];
    for (const [key, held] of this.subscribed) {
      if (held.reading === 0 && !this.items.has(key)) gone.push(key);
    }
    for (const key of gone) this.subscribed.delete(key);
    if (gone.length > 0) live.write({ remove: gone.map(itemRef) });
  }

  private dropAll(): void {
    if (this.live !== undefined) this.resets++;
    this.live = undefined;
    this.generation++;
    this.subscribed.clear();
    this.items.clear();
  }

  private onEvent(event: ItemEvent__Output): void {
    if (!event.item) return;
    const key = keyOf(event.item.job, event.item.args);
    const at = seconds(event.at);
    // A change's own data (CHANGED at its stored_at) stays; after an invalidation or a
    // removal nothing stored until then does. Without a time, nothing read so far stays.
    const bound = at === undefined ? now() + 1 : event.kind === "ITEM_EVENT_KIND_CHANGED" ? at : at + 1e-6;
    this.subscribed.get(key)?.spoil(bound);
    const item = this.items.get(key);
    if (item !== undefined && item.storedAt < bound) this.items.delete(key);
  }

  private schedule(delay: number): void {
    if (this.closed) return;
    if (this.timer) clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.open();
    }, delay);
    this.timer.unref();
  }

  /** Opens a stream on the daemon in use; it replaces everything held once the daemon
   * answers its headers, unless the client moved meanwhile. */
  private open(): void {
    if (this.closed) return;
    const { index, moves } = this.daemons.current();
    const call = this.daemons.subscribe(index);
    this.call = call;
    let up = false;
    let over = false;
    call.on("metadata", () => {
      if (this.call !== call || this.daemons.current().moves !== moves) {
        call.cancel();
        return;
      }
      up = true;
      this.dropAll();
      this.live = call;
      this.delay = 50;
      this.downInARow = 0;
      for (const wake of this.waiters.splice(0)) wake();
    });
    call.on("data", (event: ItemEvent__Output) => {
      if (this.live !== call) return;
      if (event.kind === "ITEM_EVENT_KIND_RESET") {
        call.cancel();
        return;
      }
      this.onEvent(event);
    });
    const end = (status: grpc.StatusObject) => {
      if (over) return;
      over = true;
      if (this.live === call) this.dropAll();
      if (this.call !== call) return; // replaced by lostDaemon or close
      this.call = undefined;
      if (!up && this.daemons.count > 1 && this.daemons.isDown(status)) {
        // A daemon found down moves the client on; past all of them, back off.
        this.daemons.failOver(index);
        this.downInARow++;
        if (this.downInARow < this.daemons.count) {
          this.schedule(0);
          return;
        }
        this.downInARow = 0;
      }
      this.schedule(this.delay);
      this.delay = Math.min(this.delay * 2, 2000);
    };
    // Every call ends with a status (after its 'error', if any, which needs a listener).
    call.on("error", () => {});
    call.on("status", end);
  }
}

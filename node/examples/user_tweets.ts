/**
 * The seed's third example: a Job subclass with fields and overridden policy.
 *
 * django-cacheback:
 *
 *     class UserTweets(Job):
 *         lifetime = 600
 *         fetch_on_miss = False
 *
 *         def fetch(self, username):
 *             return twitter.user_timeline(username)
 *
 *         def expiry(self, username):
 *             if username in VIPS:
 *                 return time.time() + 60
 *             return super().expiry(username)
 *
 *         def should_missing_item_be_fetched_synchronously(self, username):
 *             return username in VIPS
 *
 *     tweets = UserTweets().get(username)
 *
 * The same class against cachebackd: `expiry` becomes the item's own lifetime and the miss
 * decision is sent with each read. Run a daemon, then `node dist/examples/user_tweets.js`.
 */

import { Job, Worker, defaultClient } from "../src";
import { userTimeline } from "./fake_twitter";
import { show, waitForRefresh } from "./timeline";

const VIPS = new Set(["someone-important"]);

export class UserTweets extends Job<[string], string[]> {
  name = "examples.UserTweets"; // the Rust and Python examples' job: they share items
  lifetime = 600;
  fetchOnMiss = false;

  async fetch(username: string): Promise<string[]> {
    return userTimeline(username);
  }

  expiry(username: string): Date | number {
    if (VIPS.has(username)) return Date.now() / 1000 + 60;
    return super.expiry(username);
  }

  shouldMissingItemBeFetchedSynchronously(username: string): boolean {
    return VIPS.has(username);
  }
}

async function main(): Promise<void> {
  const worker = new Worker().serve(UserTweets).start();
  await worker.ready();
  const tweets = new UserTweets();
  for (const username of ["bob", "someone-important"]) await tweets.delete(username);
  await show("bob, a miss: null at once", () => tweets.get("bob"));
  await show("someone-important, a miss: waits", () => tweets.get("someone-important"));
  const bob = await show("bob, once fetched in background", () => waitForRefresh(tweets, "bob"));
  const vip = await show("someone-important, a hit", () => tweets.rawGet("someone-important"));
  for (const [username, item] of [["bob", bob], ["someone-important", vip]] as const) {
    const lifetime = (item.expiresAt!.getTime() - item.storedAt!.getTime()) / 1000;
    console.log(`${username} stays fresh for ${Math.round(lifetime)}s`);
  }
  await tweets.invalidate("bob");
  await show("bob, invalidated: stale at once", () => tweets.rawGet("bob"));
  await show("bob, refreshed in background", () => waitForRefresh(tweets, "bob"));
  await worker.stop();
  defaultClient().close();
}

if (require.main === module) void main();

/**
 * The seed's second example: a cached function with options.
 *
 * django-cacheback:
 *
 *     @cacheback(lifetime=1200, fetch_on_miss=False)
 *     def fetch_tweets(username):
 *         return twitter.user_timeline(username)
 *
 * A miss returns null at once and the data is fetched in the background; the item stays
 * fresh for 20 minutes. Run a daemon, then `node dist/examples/no_fetch_on_miss.js`.
 */

import { Worker, cacheback, defaultClient } from "../src";
import { userTimeline } from "./fake_twitter";
import { show, waitForRefresh } from "./timeline";

const fetchTweets = cacheback({ lifetime: 1200, fetchOnMiss: false }, async function fetchTweets(username: string) {
  return userTimeline(username);
});

async function main(): Promise<void> {
  const worker = new Worker().serve(fetchTweets).start();
  await worker.ready();
  const job = fetchTweets.job;
  await job.delete("alice");
  await show("miss: null at once, fetched in background", () => fetchTweets("alice"));
  await show("the background fetch landed", () => waitForRefresh(job, "alice"));
  const item = await show("hit: cached, at once", () => job.rawGet("alice"));
  console.log(`fresh for ${(item.expiresAt!.getTime() - item.storedAt!.getTime()) / 1000}s`);
  await worker.stop();
  defaultClient().close();
}

void main();

/**
 * The seed's first example: a cached function.
 *
 * django-cacheback:
 *
 *     @cacheback()
 *     def fetch_tweets(username):
 *         return twitter.user_timeline(username)
 *
 * Run a daemon (cachebackd --listen 127.0.0.1:7070), then `node dist/examples/decorated.js`.
 */

import { Worker, cacheback, defaultClient } from "../src";
import { userTimeline } from "./fake_twitter";
import { show, waitForRefresh } from "./timeline";

const fetchTweets = cacheback(async function fetchTweets(username: string) {
  return userTimeline(username);
});

async function main(): Promise<void> {
  const worker = new Worker().serve(fetchTweets).start();
  await worker.ready();
  const job = fetchTweets.job;
  await job.delete("bob"); // start from a miss, whatever earlier runs left
  await show("miss: waits for one fetch", () => fetchTweets("bob"));
  await show("hit: cached, at once", () => fetchTweets("bob"));
  await job.invalidate("bob");
  await show("invalidated: stale data at once", () => job.rawGet("bob"));
  await show("the background refresh landed", () => waitForRefresh(job, "bob"));
  await job.delete("bob");
  await show("deleted: the next call fetches again", () => fetchTweets("bob"));
  await worker.stop();
  defaultClient().close();
}

void main();

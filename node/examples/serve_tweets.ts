/**
 * A worker process and nothing else: serves the seed's UserTweets (job
 * `examples.UserTweets`, the Rust and Python examples' job) until SIGINT or SIGTERM, which
 * stop it gracefully. Prints `ready` once registered, so that a reader in another language
 * can be started against it. Its fetches answer `@<username>: from the Node worker`.
 *
 * `node dist/examples/serve_tweets.js`
 */

import { Job, Worker, defaultClient } from "../src";

class UserTweets extends Job<[string], string[]> {
  name = "examples.UserTweets";
  lifetime = 600;

  fetch(username: string): string[] {
    return [`@${username}: from the Node worker`];
  }
}

async function main(): Promise<void> {
  const worker = new Worker().serve(UserTweets);
  const running = worker.run();
  await worker.ready();
  console.log("ready");
  await running;
  defaultClient().close();
}

void main();

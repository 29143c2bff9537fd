/**
 * A reader that serves nothing: reads the seed's UserTweets items (job
 * `examples.UserTweets`) and prints one JSON line per username, so that a worker in
 * another language can be seen serving a Node reader (as the Rust `read_tweets` example does).
 *
 * `node dist/examples/read_tweets.js bob alice` prints lines like
 * `{"username":"bob","state":"FRESH","fetched":true,"data":["..."]}`. A miss waits for the
 * job's worker, wherever it runs.
 */

import { Job, defaultClient } from "../src";

/** The reader's view of the job: the same name, args and data as every other UserTweets. */
class UserTweets extends Job<[string], string[]> {
  name = "examples.UserTweets";

  fetch(): string[] {
    throw new Error("read_tweets only reads");
  }
}

async function main(): Promise<void> {
  const tweets = new UserTweets();
  let failed = false;
  for (const username of process.argv.slice(2)) {
    try {
      const item = await tweets.getItem(username);
      console.log(JSON.stringify({ username, state: item.state, fetched: item.fetched, data: item.data }));
    } catch (error) {
      console.error(`${username}: ${String(error)}`);
      failed = true;
    }
  }
  defaultClient().close();
  process.exitCode = failed ? 1 : 0;
}

void main();

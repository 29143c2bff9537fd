/** A stand-in for Twitter's API: slow, and newer on every call, so refreshes show. */

import { setTimeout as sleep } from "node:timers/promises";

/** Seconds one call takes (the examples' tests set it low). */
const DELAY = Number(process.env.FAKE_TWITTER_DELAY ?? "0.5");
const calls = new Map<string, number>();

/** The user's latest tweets, after a slow round trip: call n of a user returns tweets n.2 and n.1. */
export async function userTimeline(username: string): Promise<string[]> {
  await sleep(DELAY * 1000);
  const call = (calls.get(username) ?? 0) + 1;
  calls.set(username, call);
  return [`@${username} tweet ${call}.2`, `@${username} tweet ${call}.1`];
}

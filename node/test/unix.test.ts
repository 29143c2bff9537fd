/** grpc-js over the daemon's Unix socket: the package's Client, and a client that sends the
 * socket path as :authority the way gRPC C-core and grpc-java do (vendor/README.md). */

import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";

import { Client, Job } from "../src";
import { Fixture, WAIT } from "./harness";

class Echo extends Job<[string], string> {
  name = "unix.echo";
  fetch(word: string): string {
    return `${word} fetched`;
  }
}

let fx: Fixture;
let dir: string;
before(async () => {
  dir = mkdtempSync(join(tmpdir(), "cachebackd-sock-"));
  fx = await Fixture.start({ listen: `unix:${join(dir, "cachebackd.sock")}` });
  await fx.worker([new Echo(fx.client)]);
});
after(async () => {
  await fx.close();
  rmSync(dir, { recursive: true, force: true });
});

test("the package's client and worker work over the Unix socket", async () => {
  assert.equal(fx.client.target, fx.daemon.listen);
  const item = await new Echo(fx.client).getItem("hi");
  assert.deepEqual([item.state, item.fetched, item.data], ["FRESH", true, "hi fetched"]);
});

test("a grpc-js client that sends the socket path as :authority is served", async () => {
  const socket = fx.daemon.listen.slice("unix:".length);
  for (const authority of [socket, encodeURIComponent(socket)]) {
    const pathy = new Client(fx.daemon.listen, { timeout: WAIT, channelOptions: { "grpc.default_authority": authority } });
    try {
      const job = new Echo(pathy);
      await job.set(authority, "stored");
      assert.equal(await job.get(authority), "stored");
    } finally {
      pathy.close();
    }
  }
});

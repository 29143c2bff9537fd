/** The Node client's credentials against the real daemon (PROTOCOL.md, "Security"): an
 * https:// URL verified with CACHEBACKD_TLS_CA, mTLS with CACHEBACKD_TLS_CERT / _KEY, the
 * same in code, a token required by the daemon, and a Worker on them. Certificates are
 * made at run time with openssl; no key is committed. */

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";

import { CachebackError, Client, Job, Worker } from "../src";
import { Daemon, WAIT, freePort, quietLogger } from "./harness";

const TOKEN = "node-token-0123456789abcdefghijklmnopqrstuvwxyz";

class Echo extends Job<[string], string> {
  name = "secure.Echo";
  fetch(word: string): string {
    return `${word} fetched`;
  }
}

let dir: string;
let daemon: Daemon;
const pem = (name: string) => readFileSync(join(dir, name));

/** A CA, a server certificate for localhost/127.0.0.1 and a client certificate for web.internal. */
function makePki(): void {
  const ssl = (...args: string[]) => execFileSync("openssl", args, { cwd: dir, stdio: "pipe" });
  ssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1",
    "-subj", "/CN=cachebackd test CA", "-keyout", "ca.key", "-out", "ca.pem");
  for (const [name, cn, san] of [
    ["server", "localhost", "DNS:localhost,IP:127.0.0.1"],
    ["client", "web.internal", "DNS:web.internal"],
  ] as const) {
    ssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", `/CN=${cn}`,
      "-keyout", `${name}.key`, "-out", `${name}.csr`);
    writeFileSync(join(dir, `${name}.ext`), `subjectAltName=${san}\n`);
    ssl("x509", "-req", "-in", `${name}.csr`, "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
      "-days", "1", "-extfile", `${name}.ext`, "-out", `${name}.pem`);
  }
}

before(async () => {
  dir = mkdtempSync(join(tmpdir(), "cachebackd-tls-"));
  makePki();
  const hash = createHash("sha256").update(TOKEN).digest("hex");
  writeFileSync(
    join(dir, "c.toml"),
    `[auth]\nrequired = true\n[[auth.principal]]\nname = "web"\ntoken_sha256 = ["${hash}"]\n` +
      `tls_names = ["web.internal"]\nroles = ["reader", "writer", "worker", "admin"]\n`,
  );
  const tls = { ca: pem("ca.pem"), cert: pem("client.pem"), key: pem("client.key") };
  daemon = await Daemon.start({
    listen: `127.0.0.1:${await freePort()}`,
    args: ["--config", join(dir, "c.toml"), "--tls-cert", join(dir, "server.pem"), "--tls-key", join(dir, "server.key"),
      "--tls-client-ca", join(dir, "ca.pem")],
    probe: { tls },
  });
});

after(async () => {
  await daemon.close();
  rmSync(dir, { recursive: true, force: true });
});

test("an https:// URL with CACHEBACKD_TLS_* and CACHEBACKD_TOKEN: a worker and a reader over mTLS", async () => {
  const saved = { ...process.env };
  Object.assign(process.env, {
    CACHEBACKD_TLS_CA: join(dir, "ca.pem"),
    CACHEBACKD_TLS_CERT: join(dir, "client.pem"),
    CACHEBACKD_TLS_KEY: join(dir, "client.key"),
    CACHEBACKD_TOKEN: TOKEN,
  });
  const client = new Client(`https://${daemon.listen}`, { timeout: WAIT });
  process.env = saved;
  const worker = new Worker({ client, logger: quietLogger() }).serve(new Echo(client)).start();
  try {
    await worker.ready({ timeout: WAIT });
    const item = await new Echo(client).getItem("hi");
    assert.deepEqual([item.state, item.fetched, item.data], ["FRESH", true, "hi fetched"]);
  } finally {
    await worker.stop();
    client.close();
  }
});

test("tls given in code; a wrong token is UNAUTHENTICATED, the daemon's CA is required", async () => {
  const tls = { ca: pem("ca.pem"), cert: pem("client.pem"), key: pem("client.key") };
  const wrong = new Client(`https://${daemon.listen}`, { tls, token: "not-the-token", timeout: WAIT });
  const untrusting = new Client(`https://${daemon.listen}`, { tls: { cert: tls.cert, key: tls.key }, token: TOKEN, timeout: 5 });
  try {
    const refused = await new Echo(wrong).set("x", "y").catch((e: unknown) => e);
    assert.ok(refused instanceof CachebackError && refused.codeName === "UNAUTHENTICATED", String(refused));
    assert.ok(!refused.details.includes("not-the-token"), refused.details);
    const unverified = await new Echo(untrusting).get("x").catch((e: unknown) => e);
    assert.ok(unverified instanceof CachebackError && unverified.codeName === "UNAVAILABLE", String(unverified));
  } finally {
    wrong.close();
    untrusting.close();
  }
});

/**
 * A client's credentials (PROTOCOL.md, "Security"): TLS for an `https://` URL, from the
 * PEM files CACHEBACKD_TLS_CA, CACHEBACKD_TLS_CERT and CACHEBACKD_TLS_KEY name, and the
 * guard that keeps a bearer token from travelling in plaintext to another machine, as the
 * Python client does. The token itself is call metadata (`authorization: Bearer <token>`)
 * on every call, over TLS and over a Unix socket or loopback alike; grpc-js's call
 * credentials would refuse plaintext channels, and a local Unix socket is plaintext by design.
 */

import * as grpc from "@grpc/grpc-js";
import { readFileSync } from "node:fs";
import { isIP } from "node:net";

/** PEM bundle of the CAs that verify the daemon's certificate. */
export const TLS_CA_ENV = "CACHEBACKD_TLS_CA";
/** The client certificate (PEM), for mTLS. */
export const TLS_CERT_ENV = "CACHEBACKD_TLS_CERT";
/** Its private key (PEM). */
export const TLS_KEY_ENV = "CACHEBACKD_TLS_KEY";

/** TLS settings: `ca` (PEM; unset: the system's roots), `cert` and `key` (PEM, both or
 * neither: the client certificate for mTLS), `serverName` (the name to verify instead of
 * the URL's host). */
export interface TlsOptions {
  ca?: Buffer;
  cert?: Buffer;
  key?: Buffer;
  serverName?: string;
}

/** The files CACHEBACKD_TLS_CA, CACHEBACKD_TLS_CERT and CACHEBACKD_TLS_KEY name. */
export function tlsFromEnv(): TlsOptions {
  const read = (variable: string) => {
    const path = process.env[variable];
    return path ? readFileSync(path) : undefined;
  };
  return { ca: read(TLS_CA_ENV), cert: read(TLS_CERT_ENV), key: read(TLS_KEY_ENV) };
}

/** The channel credentials and options for `tls` (undefined: plaintext). */
export function channelSecurity(tls: TlsOptions | undefined): {
  credentials: grpc.ChannelCredentials;
  options: grpc.ChannelOptions;
} {
  if (tls === undefined) return { credentials: grpc.credentials.createInsecure(), options: {} };
  if ((tls.cert === undefined) !== (tls.key === undefined)) {
    throw new TypeError("tls: cert and key go together: give both or neither");
  }
  return {
    credentials: grpc.credentials.createSsl(tls.ca ?? null, tls.key ?? null, tls.cert ?? null),
    options: tls.serverName ? { "grpc.ssl_target_name_override": tls.serverName } : {},
  };
}

/** Whether `target` (`host:port` or `unix:/path`) reaches only this machine. */
export function isLocal(target: string): boolean {
  if (target.startsWith("unix:")) return true;
  const host = (target.includes(":") && !target.endsWith("]") ? target.slice(0, target.lastIndexOf(":")) : target)
    .replace(/^\[/, "")
    .replace(/\]$/, "");
  if (host.toLowerCase() === "localhost") return true;
  if (isIP(host) === 4) return host.startsWith("127.");
  if (isIP(host) === 6) return host === "::1";
  return false;
}

/** Refuses to send `token` without TLS to another machine unless `allowed`. */
export function checkPlaintextToken(target: string, token: string | undefined, tls: boolean, allowed: boolean): void {
  if (token && !tls && !allowed && !isLocal(target)) {
    throw new TypeError(
      `cachebackd: refusing to send a bearer token in plaintext to ${target}: use an https:// URL ` +
        "(or tls), or pass allowPlaintextToken: true on a trusted network",
    );
  }
}

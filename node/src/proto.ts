/**
 * The cacheback.v1 service, loaded at run time from the proto file by @grpc/proto-loader
 * (pure JS: no protoc, no generated JS to keep in step). The TypeScript types it is used
 * with are generated from the same file at build time (scripts/build.mjs), so the two
 * cannot disagree.
 */

import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { join } from "node:path";

import type { ProtoGrpcType } from "./generated/cacheback";

export type { AnswerRefused__Output } from "./generated/cacheback/v1/AnswerRefused";
export type { CachebackClient } from "./generated/cacheback/v1/Cacheback";
export type { DaemonMessage__Output } from "./generated/cacheback/v1/DaemonMessage";
export type { DeleteResponse__Output } from "./generated/cacheback/v1/DeleteResponse";
export type { GetManyResponse__Output } from "./generated/cacheback/v1/GetManyResponse";
export type { InvalidateResponse__Output } from "./generated/cacheback/v1/InvalidateResponse";
export type { InvalidateTagsResponse__Output } from "./generated/cacheback/v1/InvalidateTagsResponse";
export type { ListJobsResponse__Output } from "./generated/cacheback/v1/ListJobsResponse";
export type { SetResponse__Output } from "./generated/cacheback/v1/SetResponse";
export type { Duration } from "./generated/google/protobuf/Duration";
export type { FetchRequest__Output } from "./generated/cacheback/v1/FetchRequest";
export type { FetchResult } from "./generated/cacheback/v1/FetchResult";
export type { GetRequest } from "./generated/cacheback/v1/GetRequest";
export type { GetResponse__Output } from "./generated/cacheback/v1/GetResponse";
export type { JobConfig, JobConfig__Output } from "./generated/cacheback/v1/JobConfig";
export type { Timestamp__Output } from "./generated/google/protobuf/Timestamp";
export type { WorkerMessage } from "./generated/cacheback/v1/WorkerMessage";

/** Where the build put a copy of ../proto: beside the compiled package (dist/proto). */
const PROTO_DIR = join(__dirname, "..", "proto");

/** These options must match the flags of proto-loader-gen-types in scripts/build.mjs. */
const LOADER_OPTIONS: protoLoader.Options = {
  longs: Number,
  enums: String,
  defaults: true,
  oneofs: true,
  includeDirs: [PROTO_DIR],
};

let loaded: ProtoGrpcType | undefined;

/** The cacheback.v1 package, loaded once per process. */
export function cachebackV1(): ProtoGrpcType["cacheback"]["v1"] {
  if (loaded === undefined) {
    const definition = protoLoader.loadSync("cacheback/v1/cacheback.proto", LOADER_OPTIONS);
    loaded = grpc.loadPackageDefinition(definition) as unknown as ProtoGrpcType;
  }
  return loaded.cacheback.v1;
}

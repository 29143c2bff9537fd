// Builds the package: the TypeScript types of cacheback.v1 generated from ../proto (by
// @grpc/proto-loader's pure-JS generator, so no protoc is needed and nothing generated is
// committed, hence nothing can drift), a copy of the proto that the package loads at run
// time, then tsc.
import { cpSync, rmSync } from "node:fs";
import { execFileSync } from "node:child_process";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const proto = join(root, "..", "proto");
const bin = (name) => join(root, "node_modules", ".bin", name);
const run = (cmd, args) => execFileSync(cmd, args, { cwd: root, stdio: "inherit" });

rmSync(join(root, "dist"), { recursive: true, force: true });
rmSync(join(root, "src", "generated"), { recursive: true, force: true });
// These flags must match the loader options in src/proto.ts.
run(bin("proto-loader-gen-types"), [
  "--longs=Number",
  "--enums=String",
  "--defaults",
  "--oneofs",
  "--grpcLib=@grpc/grpc-js",
  "-I", proto,
  "-O", join(root, "src", "generated"),
  "cacheback/v1/cacheback.proto",
]);
cpSync(join(proto, "cacheback"), join(root, "dist", "proto", "cacheback"), { recursive: true });
run(bin("tsc"), ["-p", root]);

#!/usr/bin/env node
// Builds @switchboard/server: `tsc` to dist/*.js (ESM) + .d.ts for the runtime-neutral library (DOM/WebCrypto
// types only, so nothing Node-only creeps in), then the Node CLI (dist/cli.js) with Node's types, then
// type-checks test/types.ts against the built declarations.
// Uses the repository's devDependencies (typescript, @types/node) from the root node_modules.
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";

const dir = path.dirname(fileURLToPath(import.meta.url));
const tsc = createRequire(import.meta.url).resolve("typescript/bin/tsc");
fs.rmSync(path.join(dir, "dist"), { recursive: true, force: true });
// tsconfig.types.json type-checks test/types.ts against the built .d.ts (the overloads, the event union).
for (const config of ["tsconfig.json", "tsconfig.cli.json", "tsconfig.types.json"]) {
  try {
    execFileSync(process.execPath, [tsc, "-p", path.join(dir, config)], { stdio: "inherit" });
  } catch {
    console.error(`server SDK build: tsc -p ${config} failed (see above)`);
    process.exit(1);
  }
}
const files = fs.readdirSync(path.join(dir, "dist")).filter((f) => f.endsWith(".js"));
console.log(`server SDK: dist/ ${files.length} modules (${files.join(", ")})`);

#!/usr/bin/env node
// Builds the client: `tsc` to dist/index.js (ESM) + dist/index.d.ts, then reports the minified+gzip size.
// Uses the repository's devDependencies (typescript; esbuild comes with wrangler) from the root node_modules.
//   node clients/js/build.mjs          build
//   node clients/js/build.mjs --size   build and print only the size line
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import zlib from "node:zlib";
import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";

const dir = path.dirname(fileURLToPath(import.meta.url));
const require = createRequire(import.meta.url);
const tsc = require.resolve("typescript/bin/tsc");
fs.rmSync(path.join(dir, "dist"), { recursive: true, force: true });
try {
  execFileSync(process.execPath, [tsc, "-p", path.join(dir, "tsconfig.json")], { stdio: "inherit" });
} catch {
  console.error("client build: tsc failed (see above)");
  process.exit(1);
}
const js = fs.readFileSync(path.join(dir, "dist/index.js"), "utf8");
let line = `client: dist/index.js ${js.length} bytes`;
try {
  const { transformSync } = await import("esbuild");
  const min = transformSync(js, { minify: true, format: "esm", target: "es2022" }).code;
  line += `, minified ${min.length} bytes, minified+gzip ${zlib.gzipSync(min, { level: 9 }).length} bytes`;
} catch (e) {
  line += ` (esbuild unavailable for the minified size: ${e.message})`;
}
console.log(line);

#!/usr/bin/env node
// Builds the client: `tsc` to dist/ (index.js, presence.js, react.js, ESM, with .d.ts), then reports the
// minified+gzip sizes.
// Uses the repository's devDependencies (typescript, esbuild, @types/react) from the root node_modules.
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
// The size a bundler ships: dist/index.js with what it imports (presence.js), and the React module
// on its own (react and the client are the app's anyway).
let line = "client:";
try {
  const { buildSync } = await import("esbuild");
  const size = (entry, external = []) => {
    const out = buildSync({ entryPoints: [path.join(dir, entry)], bundle: true, minify: true, format: "esm", target: "es2022", write: false, external }).outputFiles[0].contents;
    return `${out.length} bytes minified, ${zlib.gzipSync(out, { level: 9 }).length} min+gzip`;
  };
  line += ` dist/index.js ${size("dist/index.js")}; dist/react.js ${size("dist/react.js", ["react", "./index.js"])}`;
} catch (e) {
  line += ` built (esbuild unavailable for the minified size: ${e.message})`;
}
console.log(line);

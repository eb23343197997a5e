#!/usr/bin/env node
// Checks the JWT secrets in a .dev.vars file the way the Worker does at startup (JWT_SECRET_MIN_BYTES,
// default 32 bytes; the .dev.vars.example placeholder is public, so it is refused too), and explains
// how to fix them. Used by scripts/dev.sh before `wrangler dev` starts.
//   node scripts/check-secret.mjs [.dev.vars]    exit 0 when fine, 1 with a message on stderr
import fs from "node:fs";

const file = process.argv[2] || ".dev.vars";
const PLACEHOLDER = "replace-with-a-long-random-string";
const text = fs.existsSync(file) ? fs.readFileSync(file, "utf8") : "";
const vars = Object.fromEntries(
  text
    .split("\n")
    .map((l) => l.match(/^\s*([A-Z_]+)\s*=\s*(.*?)\s*$/))
    .filter(Boolean)
    .map((m) => [m[1], m[2].replace(/^"(.*)"$/, "$1")]),
);
const min = Number(vars.JWT_SECRET_MIN_BYTES ?? process.env.JWT_SECRET_MIN_BYTES ?? 32);
let ok = true;
for (const name of ["JWT_SECRET", "JWT_SECRET_PREVIOUS"]) {
  const v = vars[name];
  if (v === undefined && name === "JWT_SECRET_PREVIOUS") continue;
  const why =
    v === undefined || v === ""
      ? "is not set"
      : v === PLACEHOLDER
        ? "is still the example's placeholder (it is public)"
        : Buffer.byteLength(v) < min
          ? `is shorter than ${min} bytes (JWT_SECRET_MIN_BYTES)`
          : "";
  if (why) {
    ok = false;
    console.error(`[dev] error: ${name} in ${file} ${why}.`);
    console.error(`[dev]   Put a random secret there, e.g. ${name}=$(openssl rand -base64 32), or delete ${file} and run \`make dev\` again to get one.`);
  }
}
process.exit(ok ? 0 : 1);

#!/usr/bin/env node
// Mints a development token from JWT_SECRET in .dev.vars (or the environment).
//   node scripts/token.mjs --user alice            a client token (connect as alice)
//   node scripts/token.mjs --publish               a backend token (scope "publish")
//   node scripts/token.mjs --user alice --ttl 600  expires in 10 minutes (default 24 h)
//   node scripts/token.mjs --user alice --channels 'lobby,room:*' --publish-channels 'room:*'
//                                                  may join (and publish to) those channels
import crypto from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");

export function readSecret(file = path.join(root, ".dev.vars")) {
  if (process.env.JWT_SECRET) return process.env.JWT_SECRET;
  if (!fs.existsSync(file)) throw new Error(`no JWT_SECRET: ${file} does not exist (run \`make dev\` once to create it)`);
  const line = fs.readFileSync(file, "utf8").split("\n").find((l) => /^\s*JWT_SECRET\s*=/.test(l));
  if (!line) throw new Error(`no JWT_SECRET line in ${file}`);
  return line.replace(/^\s*JWT_SECRET\s*=\s*/, "").replace(/^"(.*)"$/, "$1").trim();
}

export function mint(claims, secret) {
  const enc = (x) => Buffer.from(JSON.stringify(x)).toString("base64url");
  const data = `${enc({ alg: "HS256", typ: "JWT" })}.${enc(claims)}`;
  return `${data}.${crypto.createHmac("sha256", secret).update(data).digest("base64url")}`;
}

function list(value, flag) {
  const items = (value ?? "").split(",").map((s) => s.trim()).filter(Boolean);
  if (!items.length) throw new Error(`${flag} needs a comma-separated list, e.g. 'lobby,room:*'`);
  return items;
}

function main(argv) {
  const args = { ttl: 86400 };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === "--user") args.user = argv[++i];
    else if (a === "--publish") args.publish = true;
    else if (a === "--ttl") args.ttl = Number(argv[++i]);
    else if (a === "--channels") args.channels = list(argv[++i], a);
    else if (a === "--publish-channels") args.publishChannels = list(argv[++i], a);
    else if (a === "--help" || a === "-h") args.help = true;
    else throw new Error(`unknown argument ${a} (see --help)`);
  }
  if (args.help || (!args.user && !args.publish)) {
    console.log("usage: node scripts/token.mjs [--user ID] [--publish] [--ttl SECONDS] [--channels LIST] [--publish-channels LIST]");
    console.log("  LIST: comma-separated channel names and prefix patterns, e.g. 'lobby,room:*' ('*': every channel)");
    return;
  }
  if (!Number.isInteger(args.ttl) || args.ttl <= 0) throw new Error("--ttl must be a positive whole number of seconds");
  const now = Math.floor(Date.now() / 1000);
  const claims = { iat: now, exp: now + args.ttl };
  if (args.user) claims.userId = args.user;
  if (args.channels) claims.channels = args.channels;
  if (args.publishChannels) claims.publishChannels = args.publishChannels;
  if (args.publish) claims.scope = "publish";
  else claims.sub = args.user;
  console.log(mint(claims, readSecret()));
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  try {
    main(process.argv.slice(2));
  } catch (e) {
    console.error(`token: ${e.message}`);
    process.exit(2);
  }
}

#!/usr/bin/env node
// The `switchboard` CLI (npx switchboard --help). The code is in src/cli.ts, compiled to dist/cli.js.
import { main } from "../dist/cli.js";

process.exitCode = await main(process.argv.slice(2));

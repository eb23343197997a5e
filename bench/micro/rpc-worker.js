// The Durable Objects bench/micro/rpc.mjs drives: a Fan object calls `members` Member objects over
// RPC, all at once, `rounds` times per request, the way a channel's relay calls its members' hubs.
// `op=noop`: the member returns at once; `op=write`: it upserts one row first (one write
// transaction per call, as a member's hub does when it records an envelope).
import { DurableObject } from "cloudflare:workers";

export class Member extends DurableObject {
  noop(x) {
    return x;
  }
  write(x) {
    if (!this.ready) {
      this.ctx.storage.sql.exec("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)");
      this.ready = true;
    }
    this.ctx.storage.sql.exec(
      "INSERT INTO meta (key, value) VALUES ('seq', ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
      x,
    );
    return x;
  }
}

export class Fan extends DurableObject {
  async fetch(req) {
    const u = new URL(req.url);
    const members = Number(u.searchParams.get("members") || 100);
    const rounds = Number(u.searchParams.get("rounds") || 1);
    const op = u.searchParams.get("op") || "noop";
    const prefix = u.searchParams.get("prefix") || "m";
    const stubs = [];
    for (let i = 0; i < members; i++) stubs.push(this.env.MEMBER.get(this.env.MEMBER.idFromName(`${prefix}-${i}`)));
    let sum = 0;
    for (let r = 0; r < rounds; r++) {
      const out = await Promise.all(stubs.map((s, i) => (op === "write" ? s.write(r * members + i) : s.noop(i))));
      sum += out.length;
    }
    return new Response(String(sum));
  }
}

export default {
  fetch(req, env) {
    return env.FAN.get(env.FAN.idFromName("fan")).fetch(req);
  },
};

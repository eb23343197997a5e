// The Durable Object bench/micro/sql.mjs drives: each request runs one kind of SQLite work `n` times.
// SCHEMA12 (12 tables and an index) is the user hub's schema before the lazy tables (src/user_hub/mod.rs) as of 2026-11-30.
import { DurableObject } from "cloudflare:workers";
const SCHEMA12 = `
CREATE TABLE IF NOT EXISTS subscriptions (conn_id TEXT PRIMARY KEY, filters TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS history (seq INTEGER PRIMARY KEY, at INTEGER NOT NULL, envelope TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS idempotency (key TEXT PRIMARY KEY, seq INTEGER NOT NULL, envelope_id TEXT NOT NULL,
  at INTEGER NOT NULL, body_hash TEXT NOT NULL, response TEXT);
CREATE INDEX IF NOT EXISTS idempotency_at ON idempotency (at);
CREATE TABLE IF NOT EXISTS outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL, body TEXT NOT NULL,
  created INTEGER NOT NULL, attempts INTEGER NOT NULL, next_at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS grants (conn_id TEXT PRIMARY KEY, join_grants TEXT NOT NULL, publish_grants TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS channels (name TEXT PRIMARY KEY, version INTEGER NOT NULL, user_id TEXT NOT NULL,
  left_at INTEGER);
CREATE TABLE IF NOT EXISTS tickets (hash TEXT PRIMARY KEY, expires_at INTEGER NOT NULL, exp INTEGER,
  join_grants TEXT NOT NULL, publish_grants TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS conn_presence (conn_id TEXT PRIMARY KEY, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS ticket_presence (hash TEXT PRIMARY KEY, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS channel_watch (name TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS presence (user_id TEXT PRIMARY KEY, online_at INTEGER NOT NULL, offline_since INTEGER);`;
const SCHEMA3 = `
CREATE TABLE IF NOT EXISTS subscriptions (conn_id TEXT PRIMARY KEY, filters TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS history (seq INTEGER PRIMARY KEY, at INTEGER NOT NULL, envelope TEXT NOT NULL);`;
const SCHEMA1 = `CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);`;

export class Hub extends DurableObject {
  async fetch(req) {
    const u = new URL(req.url);
    const op = u.searchParams.get("op");
    const n = Number(u.searchParams.get("n") || 1000);
    const size = Number(u.searchParams.get("size") || 100);
    const sql = this.ctx.storage.sql;
    if (op === "schema12") { sql.exec(SCHEMA12); return new Response("ok"); }
    if (op === "schema3") { sql.exec(SCHEMA3); return new Response("ok"); }
    if (op === "schema1") { sql.exec(SCHEMA1); return new Response("ok"); }
    if (op === "none") { return new Response("ok"); }
    if (!this.ready) { sql.exec(SCHEMA12); this.ready = true; this.seq = Number(sql.exec("SELECT coalesce(max(seq),0) AS s FROM history").one().s); }
    const env = "x".repeat(size);
    let seq = this.seq;
    if (op === "meta") {
      for (let i = 0; i < n; i++) sql.exec("INSERT INTO meta (key, value) VALUES ('seq', ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value", ++seq);
    } else if (op === "hist") {
      for (let i = 0; i < n; i++) sql.exec("INSERT INTO history (seq, at, envelope) VALUES (?, ?, ?)", ++seq, Date.now(), env);
    } else if (op === "histdel") {
      for (let i = 0; i < n; i++) { sql.exec("INSERT INTO history (seq, at, envelope) VALUES (?, ?, ?)", ++seq, Date.now(), env); if (i % 64 == 0) sql.exec("DELETE FROM history WHERE seq < ?", seq - 100); }
    } else if (op === "histconsume") {
      for (let i = 0; i < n; i++) sql.exec("INSERT INTO history (seq, at, envelope) VALUES (?, ?, ?)", ++seq, Date.now(), env).toArray();
    } else if (op === "kv") {
      for (let i = 0; i < n; i++) this.ctx.storage.put("h" + (++seq), env);
    } else if (op === "str") {
      let t = 0; for (let i = 0; i < n; i++) t += ("y" + env + i).length;
    }
    this.seq = seq;
    return new Response("ok " + seq);
  }
}
export default {
  async fetch(req, env) {
    const u = new URL(req.url);
    const name = u.searchParams.get("name") || "a";
    return env.HUB.get(env.HUB.idFromName(name)).fetch(req);
  },
};

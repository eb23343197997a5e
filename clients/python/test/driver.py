"""Drives switchboard_server for the end-to-end test (clients/python/test/e2e.test.mjs).

Reads one JSON command per line on stdin, answers one JSON line on stdout:
  {"id": 1, "op": "publish", "mode": "sync"|"async", "args": {...}, "faults": [...]}
  -> {"id": 1, "ok": <result>, "keys": [<Idempotency-Key of every attempt>]}
  -> {"id": 1, "error": {"type": "SwitchboardError", "code", "status", "attempts", "message"}}
Faults, one per attempt, in order: {"status": 503, "body": {...}} answers without reaching the Worker;
"lose" forwards the request, then prints {"event": "paused"}, waits for a line on stdin and fails the
attempt with a network error (the answer was lost on the way back).
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import httpx

import switchboard_server as sb


class Faulty:
    def __init__(self, faults: list[Any]) -> None:
        self.faults = list(faults)
        self.keys: list[str | None] = []

    def before(self, request: httpx.Request) -> httpx.Response | None:
        self.keys.append(request.headers.get("idempotency-key"))
        fault = self.faults[0] if self.faults else None
        if isinstance(fault, dict):
            self.faults.pop(0)
            return httpx.Response(fault["status"], json=fault.get("body"), headers=fault.get("headers"), request=request)
        return None

    def after(self, request: httpx.Request) -> None:
        if self.faults and self.faults[0] == "lose":
            self.faults.pop(0)
            print(json.dumps({"event": "paused"}), flush=True)
            sys.stdin.readline()
            raise httpx.ReadError("connection reset by peer", request=request)


class SyncTransport(httpx.HTTPTransport):
    def __init__(self, faulty: Faulty) -> None:
        super().__init__()
        self.faulty = faulty

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        canned = self.faulty.before(request)
        if canned is not None:
            return canned
        res = super().handle_request(request)
        res.read()
        self.faulty.after(request)
        return res


class AsyncTransport(httpx.AsyncHTTPTransport):
    def __init__(self, faulty: Faulty) -> None:
        super().__init__()
        self.faulty = faulty

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        canned = self.faulty.before(request)
        if canned is not None:
            return canned
        res = await super().handle_async_request(request)
        await res.aread()
        self.faulty.after(request)
        return res


def client_kwargs(cmd: dict[str, Any]) -> dict[str, Any]:
    kw: dict[str, Any] = {"retry": sb.Retry(**cmd.get("retry", {"min_delay": 0.02, "max_delay": 0.1}))}
    if "request_timeout" in cmd:
        kw["request_timeout"] = cmd["request_timeout"]
    if "token" in cmd:
        kw["token"] = cmd["token"]
    else:
        kw["secret"] = cmd["secret"]
    return kw


def run_sync(cmd: dict[str, Any], faulty: Faulty) -> Any:
    op, args = cmd["op"], cmd.get("args", {})
    with sb.Switchboard(cmd["url"], http_client=httpx.Client(transport=SyncTransport(faulty)), **client_kwargs(cmd)) as c:
        if op == "members":
            return list(c.members(args["channel"], limit=args.get("limit")))
        return getattr(c, op)(**args)


async def run_async(cmd: dict[str, Any], faulty: Faulty) -> Any:
    op, args = cmd["op"], cmd.get("args", {})
    async with sb.AsyncSwitchboard(cmd["url"], http_client=httpx.AsyncClient(transport=AsyncTransport(faulty)), **client_kwargs(cmd)) as c:
        if op == "members":
            return [page async for page in c.members(args["channel"], limit=args.get("limit"))]
        return await getattr(c, op)(**args)


def handle(cmd: dict[str, Any]) -> dict[str, Any]:
    faulty = Faulty(cmd.get("faults", []))
    try:
        if cmd["op"] == "mint_token":
            result: Any = sb.mint_token(**cmd["args"])
        elif cmd["op"] == "verify_webhook":
            result = sb.verify_webhook(cmd["args"]["secret"], cmd["args"]["body"].encode(), cmd["args"]["headers"])
        elif cmd.get("mode") == "async":
            result = asyncio.run(run_async(cmd, faulty))
        else:
            result = run_sync(cmd, faulty)
        return {"id": cmd["id"], "ok": result, "keys": faulty.keys}
    except sb.SwitchboardError as e:
        return {"id": cmd["id"], "error": {"type": "SwitchboardError", "code": e.code, "status": e.status, "attempts": e.attempts, "retryable": e.retryable, "message": e.message}, "keys": faulty.keys}
    except sb.WebhookVerificationError as e:
        return {"id": cmd["id"], "error": {"type": "WebhookVerificationError", "message": str(e)}}


def main() -> None:
    print(json.dumps({"event": "ready", "version": sys.version.split()[0]}), flush=True)
    for line in sys.stdin:
        if line.strip():
            print(json.dumps(handle(json.loads(line))), flush=True)


if __name__ == "__main__":
    main()

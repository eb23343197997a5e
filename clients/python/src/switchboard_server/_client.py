"""Sync and async clients for a Switchboard Worker, on httpx."""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable, Iterator, Sequence, cast, overload
from urllib.parse import quote, urlencode

import httpx

from ._errors import SwitchboardError, is_retryable_status
from ._token import mint_token
from ._types import ChannelPublishResult, Connection, ConnectionList, MembersPage, MultiPublishResult, PublishResult

_MINTED_TOKEN_SECONDS = 600  # publish tokens minted from `secret` live this long, renewed a minute early
_DEFAULT_ACK_WAIT_S = 30.0  # the server's default cap on a publish's timeoutMs
_GRACE_S = 10.0
_POLL_GRACE_S = 2.0  # how long past the ack wait an `inProgress` answer is asked again
_UNSET: Any = object()


@dataclass(frozen=True)
class Retry:
    """Attempts in all (the first included; 1 turns retries off); delays start at ``min_delay`` seconds,
    double per retry with full jitter, up to ``max_delay``."""

    attempts: int = 4
    min_delay: float = 0.2
    max_delay: float = 3.0

    def delay(self, retry: int) -> float:
        return random.random() * min(self.max_delay, self.min_delay * float(2 ** (retry - 1)))


@dataclass
class _Call:
    method: str
    path: str
    body: bytes | None
    key: str | None
    timeout: float


class _Base:
    def __init__(
        self,
        url: str,
        *,
        secret: str | None = None,
        token: str | Callable[[], str] | None = None,
        retry: Retry | None = None,
        request_timeout: float | None = None,
    ) -> None:
        parsed = httpx.URL(url)
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise SwitchboardError("invalid_argument", f"url must be an absolute http(s) URL, got {url!r}")
        if not secret and not token:
            raise SwitchboardError("invalid_argument", "give secret (JWT_SECRET) or token (a publish token)")
        self.url = str(url).rstrip("/")
        self._secret = secret
        self._token = token
        self._retry = retry or Retry()
        if self._retry.attempts < 1:
            raise SwitchboardError("invalid_argument", "retry.attempts must be >= 1")
        self._request_timeout = request_timeout
        self._minted: tuple[str, float] | None = None

    def _authorization(self) -> str:
        if self._token is not None:
            return self._token() if callable(self._token) else self._token
        now = time.monotonic()
        if self._minted is None or now >= self._minted[1]:
            assert self._secret is not None
            token = mint_token(self._secret, publish=True, expires_in=_MINTED_TOKEN_SECONDS, claims={"sub": "switchboard-server-sdk"})
            self._minted = (token, now + _MINTED_TOKEN_SECONDS - 60)
        return self._minted[0]

    def _publish_call(
        self,
        user_id: str | None,
        user_ids: Sequence[str] | None,
        channel: str | None,
        connection_id: str | None,
        type: str | None,
        payload: Any,
        timeout_ms: int | None,
        idempotency_key: str | None,
    ) -> _Call:
        targets = [x for x in (user_id, user_ids, channel) if x is not None]
        if len(targets) != 1:
            raise SwitchboardError("invalid_argument", "publish needs exactly one of user_id, user_ids and channel")
        body: dict[str, Any] = {}
        if user_id is not None:
            body["userId"] = user_id
        if user_ids is not None:
            body["userIds"] = list(user_ids)
        if channel is not None:
            body["channel"] = channel
        if connection_id is not None:
            body["connectionId"] = connection_id
        if type is not None:
            body["type"] = type
        if payload is not _UNSET:
            body["payload"] = payload
        if timeout_ms is not None:
            body["timeoutMs"] = timeout_ms
        wait = (timeout_ms / 1000) if timeout_ms is not None else _DEFAULT_ACK_WAIT_S
        return _Call(
            "POST",
            "/publish",
            json.dumps(body, separators=(",", ":")).encode(),
            idempotency_key or str(uuid.uuid4()),
            self._request_timeout or wait + _GRACE_S,
        )

    def _call(self, method: str, path: str) -> _Call:
        return _Call(method, path, None, None, self._request_timeout or _GRACE_S)

    def _headers(self, call: _Call) -> dict[str, str]:
        h = {"authorization": f"Bearer {self._authorization()}"}
        if call.body is not None:
            h["content-type"] = "application/json"
        if call.key is not None:
            h["idempotency-key"] = call.key
        return h

    @staticmethod
    def _outcome(call: _Call, res: httpx.Response, attempt: int) -> tuple[Any, SwitchboardError | None]:
        """The parsed answer, or the error (retried by the caller when it is retryable)."""
        try:
            data = res.json() if res.content else None
        except ValueError:
            data = None
        if res.is_success:
            if data is None:
                raise SwitchboardError("invalid_response", f"{call.method} {call.path} answered {res.status_code} with a body that is not JSON", status=res.status_code, attempts=attempt)
            return data, None
        code: str = data["error"] if isinstance(data, dict) and isinstance(data.get("error"), str) else f"http_{res.status_code}"
        message: str = data["message"] if isinstance(data, dict) and isinstance(data.get("message"), str) else res.text[:200]
        err = SwitchboardError(code, f"{call.method} {call.path}: {res.status_code} {code}: {message}", status=res.status_code, body=data, attempts=attempt)
        retry_after = res.headers.get("retry-after")
        err.retry_after = float(retry_after) if retry_after and retry_after.isdigit() else None  # type: ignore[attr-defined]
        if not is_retryable_status(res.status_code, code):
            raise err
        return None, err

    def _network_error(self, call: _Call, e: Exception, attempt: int) -> SwitchboardError:
        if isinstance(e, httpx.TimeoutException):
            return SwitchboardError("request_timeout", f"{call.method} {call.path}: no answer within {call.timeout} s", attempts=attempt)
        return SwitchboardError("network_error", f"{call.method} {call.path}: cannot reach {self.url} ({e!r})", attempts=attempt)

    def _wait(self, last: SwitchboardError | None, attempt: int) -> float:
        after = getattr(last, "retry_after", None)
        return min(after, 60.0) if after is not None else self._retry.delay(attempt - 1)

    @staticmethod
    def _members_path(channel: str, limit: int | None, cursor: str | None) -> str:
        q = {}
        if limit is not None:
            q["limit"] = str(limit)
        if cursor:
            q["cursor"] = cursor
        return f"/channels/{_segment(channel, 'channel')}/members" + (f"?{urlencode(q)}" if q else "")


def _segment(value: str, name: str) -> str:
    if not isinstance(value, str) or not value:
        raise SwitchboardError("invalid_argument", f"{name} must be a non-empty string")
    return quote(value, safe="")


class Switchboard(_Base):
    """The backend's client (blocking). Every ``publish`` carries an ``Idempotency-Key`` (yours, or a random
    one per call) and network errors, 429 and 5xx are retried with backoff using that same key: the Worker
    delivers a key once, so a retry never delivers twice.

    >>> sb = Switchboard("https://switchboard.example.com", secret=os.environ["JWT_SECRET"])
    >>> sb.publish(user_id="alice", type="chat", payload={"text": "hi"})["results"]
    """

    def __init__(self, url: str, *, http_client: httpx.Client | None = None, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self._http = http_client or httpx.Client()
        self._own = http_client is None

    def close(self) -> None:
        if self._own:
            self._http.close()

    def __enter__(self) -> "Switchboard":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _request(self, call: _Call) -> Any:
        last: SwitchboardError | None = None
        for attempt in range(1, self._retry.attempts + 1):
            if attempt > 1:
                time.sleep(self._wait(last, attempt))
            try:
                res = self._http.request(call.method, self.url + call.path, content=call.body, headers=self._headers(call), timeout=call.timeout)
            except httpx.TransportError as e:
                last = self._network_error(call, e, attempt)
                continue
            data, last = self._outcome(call, res, attempt)
            if last is None:
                return data
        assert last is not None
        raise last

    @overload
    def publish(self, *, user_id: str, connection_id: str | None = None, type: str | None = None, payload: Any = _UNSET, timeout_ms: int | None = None, idempotency_key: str | None = None) -> PublishResult: ...
    @overload
    def publish(self, *, user_ids: Sequence[str], type: str | None = None, payload: Any = _UNSET, timeout_ms: int | None = None, idempotency_key: str | None = None) -> MultiPublishResult: ...
    @overload
    def publish(self, *, channel: str, type: str | None = None, payload: Any = _UNSET, timeout_ms: int | None = None, idempotency_key: str | None = None) -> ChannelPublishResult: ...
    def publish(self, *, user_id=None, user_ids=None, channel=None, connection_id=None, type=None, payload=_UNSET, timeout_ms=None, idempotency_key=None):  # type: ignore[no-untyped-def]
        """Publishes to one user (``user_id``, optionally one ``connection_id``), many (``user_ids``) or a
        channel's members (``channel``), and returns the acks."""
        call = self._publish_call(user_id, user_ids, channel, connection_id, type, payload, timeout_ms, idempotency_key)
        started = time.monotonic()
        answer = self._request(call)
        # A retry that lands while the first attempt still waits for acks is answered `inProgress`: ask
        # again (same key, nothing delivered twice) until the final answer is stored or the wait is over.
        poll_until = started + (timeout_ms / 1000 if timeout_ms is not None else _DEFAULT_ACK_WAIT_S) + _POLL_GRACE_S
        polls = 0
        while answer.get("inProgress") and user_id is not None and time.monotonic() < poll_until:
            polls += 1
            time.sleep(self._retry.delay(polls))
            answer = self._request(call)
        return answer

    def connections(self, user_id: str) -> list[Connection]:
        """The user's open connections."""
        return self.connection_list(user_id)["connections"]

    def connection_list(self, user_id: str) -> ConnectionList:
        """The user's open connections and webhook queue (``webhooks``: ``backlog``, ``dropped``)."""
        return cast(ConnectionList, self._request(self._call("GET", f"/users/{_segment(user_id, 'user_id')}/connections")))

    def close_connection(self, user_id: str, connection_id: str) -> list[str]:
        """Closes one connection (code 4002); ``connection_not_found`` if it is not open."""
        path = f"/users/{_segment(user_id, 'user_id')}/connections/{_segment(connection_id, 'connection_id')}"
        return cast("list[str]", self._request(self._call("DELETE", path))["closed"])

    def close_connections(self, user_id: str) -> list[str]:
        """Closes every connection of the user (code 4002): "log out everywhere"."""
        return cast("list[str]", self._request(self._call("DELETE", f"/users/{_segment(user_id, 'user_id')}/connections"))["closed"])

    def members_page(self, channel: str, *, limit: int | None = None, cursor: str | None = None) -> MembersPage:
        """One page of a channel's member users."""
        return cast(MembersPage, self._request(self._call("GET", self._members_path(channel, limit, cursor))))

    def members(self, channel: str, *, limit: int | None = None) -> Iterator[MembersPage]:
        """Every page of a channel's members, fetched as you iterate."""
        cursor: str | None = None
        while True:
            page = self.members_page(channel, limit=limit, cursor=cursor)
            yield page
            cursor = page["nextCursor"]
            if not cursor:
                return


class AsyncSwitchboard(_Base):
    """:class:`Switchboard` for asyncio (``await sb.publish(...)``, ``async for page in sb.members(...)``)."""

    def __init__(self, url: str, *, http_client: httpx.AsyncClient | None = None, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self._http = http_client or httpx.AsyncClient()
        self._own = http_client is None

    async def aclose(self) -> None:
        if self._own:
            await self._http.aclose()

    async def __aenter__(self) -> "AsyncSwitchboard":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    async def _request(self, call: _Call) -> Any:
        last: SwitchboardError | None = None
        for attempt in range(1, self._retry.attempts + 1):
            if attempt > 1:
                await asyncio.sleep(self._wait(last, attempt))
            try:
                res = await self._http.request(call.method, self.url + call.path, content=call.body, headers=self._headers(call), timeout=call.timeout)
            except httpx.TransportError as e:
                last = self._network_error(call, e, attempt)
                continue
            data, last = self._outcome(call, res, attempt)
            if last is None:
                return data
        assert last is not None
        raise last

    @overload
    async def publish(self, *, user_id: str, connection_id: str | None = None, type: str | None = None, payload: Any = _UNSET, timeout_ms: int | None = None, idempotency_key: str | None = None) -> PublishResult: ...
    @overload
    async def publish(self, *, user_ids: Sequence[str], type: str | None = None, payload: Any = _UNSET, timeout_ms: int | None = None, idempotency_key: str | None = None) -> MultiPublishResult: ...
    @overload
    async def publish(self, *, channel: str, type: str | None = None, payload: Any = _UNSET, timeout_ms: int | None = None, idempotency_key: str | None = None) -> ChannelPublishResult: ...
    async def publish(self, *, user_id=None, user_ids=None, channel=None, connection_id=None, type=None, payload=_UNSET, timeout_ms=None, idempotency_key=None):  # type: ignore[no-untyped-def]
        """See :meth:`Switchboard.publish`."""
        call = self._publish_call(user_id, user_ids, channel, connection_id, type, payload, timeout_ms, idempotency_key)
        started = time.monotonic()
        answer = await self._request(call)
        poll_until = started + (timeout_ms / 1000 if timeout_ms is not None else _DEFAULT_ACK_WAIT_S) + _POLL_GRACE_S
        polls = 0
        while answer.get("inProgress") and user_id is not None and time.monotonic() < poll_until:
            polls += 1
            await asyncio.sleep(self._retry.delay(polls))
            answer = await self._request(call)
        return answer

    async def connections(self, user_id: str) -> list[Connection]:
        return (await self.connection_list(user_id))["connections"]

    async def connection_list(self, user_id: str) -> ConnectionList:
        return cast(ConnectionList, await self._request(self._call("GET", f"/users/{_segment(user_id, 'user_id')}/connections")))

    async def close_connection(self, user_id: str, connection_id: str) -> list[str]:
        path = f"/users/{_segment(user_id, 'user_id')}/connections/{_segment(connection_id, 'connection_id')}"
        return cast("list[str]", (await self._request(self._call("DELETE", path)))["closed"])

    async def close_connections(self, user_id: str) -> list[str]:
        return cast("list[str]", (await self._request(self._call("DELETE", f"/users/{_segment(user_id, 'user_id')}/connections")))["closed"])

    async def members_page(self, channel: str, *, limit: int | None = None, cursor: str | None = None) -> MembersPage:
        return cast(MembersPage, await self._request(self._call("GET", self._members_path(channel, limit, cursor))))

    async def members(self, channel: str, *, limit: int | None = None) -> AsyncIterator[MembersPage]:
        cursor: str | None = None
        while True:
            page = await self.members_page(channel, limit=limit, cursor=cursor)
            yield page
            cursor = page["nextCursor"]
            if not cursor:
                return

"""The shapes of the API's answers and webhook events (TypedDicts: plain dicts at run time)."""

from __future__ import annotations

import sys
from typing import Any, Literal, TypedDict, Union

if sys.version_info >= (3, 11):
    from typing import NotRequired
else:  # pragma: no cover
    from typing_extensions import NotRequired


class Ack(TypedDict):
    connectionId: str
    result: NotRequired[Any]
    """Absent only in a ``trimmed`` answer (a stored answer replayed without results)."""


class _Delivery(TypedDict):
    """What a one-user answer and a user's entry in a ``user_ids`` or channel answer share."""

    envelopeId: str
    seq: int
    clientCount: int
    acks: list[Ack]
    pending: list[str]
    closed: list[str]
    duplicate: NotRequired[Literal[True]]
    inProgress: NotRequired[Literal[True]]
    outcome: NotRequired[Literal["unknown"]]
    """The first publish with this key died with its hub while it waited: delivered once, acks lost."""
    trimmed: NotRequired[Literal[True]]
    """A stored answer over IDEMPOTENCY_MAX_RESPONSE_BYTES, replayed without ack results."""
    acked: NotRequired[int]
    pendingCount: NotRequired[int]
    closedCount: NotRequired[int]


class PublishResult(_Delivery):
    """The answer to a publish to one user."""

    results: list[Any]


class UserResult(_Delivery):
    """One user's entry in a ``user_ids`` or channel answer: no ``results`` (each ack result is in
    ``acks`` and in the answer's flat ``results``, kept once)."""

    userId: str
    truncated: NotRequired[Literal[True]]
    """This user's ack results were left out (PUBLISH_RESULTS_MAX_BYTES); ``acks`` keep connectionId."""
    joined: NotRequired[int]
    lingering: NotRequired[Literal[True]]


class UserFailure(TypedDict):
    userId: str
    status: int
    error: str
    message: str


class RelayFailure(TypedDict):
    relay: str
    users: int
    status: int
    error: str
    message: str


class Totals(TypedDict):
    users: int
    succeeded: int
    failed: int
    clientCount: int
    acked: int
    pending: int
    closed: int
    pruned: NotRequired[int]


class MultiPublishResult(TypedDict):
    """The answer to a ``user_ids`` publish: every user's outcome in the order asked."""

    clientCount: int
    results: list[Any]
    totals: Totals
    users: list[Union[UserResult, UserFailure]]
    truncated: bool
    """Ack results were left out to stay within PUBLISH_RESULTS_MAX_BYTES; the totals stay exact."""


class ChannelPublishResult(TypedDict):
    """The answer to a channel publish (at most 1,000 entries in ``users``, failures first)."""

    channel: str
    clientCount: int
    results: list[Any]
    totals: Totals
    users: list[Union[UserResult, UserFailure, RelayFailure]]
    truncated: bool


class Connection(TypedDict):
    connectionId: str
    transport: Literal["websocket", "sse"]
    connectedAt: str
    expiresAt: str | None
    closesAt: str | None
    filters: list[dict[str, str]]
    lastPingAt: str | None


class WebhookQueue(TypedDict):
    """A user's webhook queue: events waiting (``backlog``) and dropped for good (``dropped``)."""

    backlog: int
    dropped: int


class ConnectionList(TypedDict):
    """The whole answer of ``GET /users/{userId}/connections``."""

    connections: list[Connection]
    webhooks: WebhookQueue


class MembersPage(TypedDict):
    channel: str
    count: int
    members: list[str]
    nextCursor: str | None


class SwitchboardEvent(TypedDict):
    """A CloudEvent: ``type`` is ``switchboard.connection.opened.v1``, ``switchboard.connection.closed.v1``,
    ``switchboard.client.message.v1`` or ``switchboard.connection.coalesced.v1``; with ``PRESENCE_WEBHOOKS=on``
    also ``switchboard.user.online.v1``, ``switchboard.user.offline.v1``, ``switchboard.channel.member.joined.v1``
    or ``switchboard.channel.member.left.v1`` (README, "Presence webhooks"); ``subject`` is the user id;
    ``id`` is the same on every retry."""

    specversion: Literal["1.0"]
    id: str
    source: str
    type: str
    subject: str
    time: str
    datacontenttype: str
    data: dict[str, Any]


def is_failure(outcome: dict[str, Any]) -> bool:
    """Whether a per-user entry of a multi-user or channel publish is a failure."""
    return isinstance(outcome.get("error"), str)

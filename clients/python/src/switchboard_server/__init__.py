"""Server SDK for Switchboard: publish and read acks, mint tokens, verify webhooks, connections and members.

>>> from switchboard_server import Switchboard, mint_token, verify_webhook
"""

from ._client import AsyncSwitchboard, Retry, Switchboard
from ._errors import SwitchboardError, WebhookVerificationError, is_retryable_status
from ._token import mint_token
from ._types import (
    Ack,
    ChannelPublishResult,
    Connection,
    ConnectionList,
    MembersPage,
    MultiPublishResult,
    PublishResult,
    RelayFailure,
    SwitchboardEvent,
    Totals,
    UserFailure,
    UserResult,
    WebhookQueue,
    is_failure,
)
from ._webhook import verify_webhook, verify_webhook_events

__all__ = [
    "Ack",
    "AsyncSwitchboard",
    "ChannelPublishResult",
    "Connection",
    "ConnectionList",
    "MembersPage",
    "MultiPublishResult",
    "PublishResult",
    "RelayFailure",
    "Retry",
    "Switchboard",
    "SwitchboardError",
    "SwitchboardEvent",
    "Totals",
    "UserFailure",
    "UserResult",
    "WebhookQueue",
    "WebhookVerificationError",
    "is_failure",
    "is_retryable_status",
    "mint_token",
    "verify_webhook",
    "verify_webhook_events",
]

"""Webhook verification with the official ``standardwebhooks`` package."""

from __future__ import annotations

from typing import Any, Mapping, Union, cast

from standardwebhooks.webhooks import Webhook

from ._errors import WebhookVerificationError
from ._types import SwitchboardEvent

_NAMES = ("webhook-id", "webhook-timestamp", "webhook-signature")


def _verifier(secret: str) -> Webhook:
    # The Worker accepts `whsec_<base64>` (decoded, as every Standard Webhooks library does) or any other
    # string, used as raw bytes; the official package takes raw keys as `bytes`.
    if not isinstance(secret, str) or not secret:
        raise WebhookVerificationError("the webhook secret is empty")
    return Webhook(secret) if secret.startswith("whsec_") else Webhook(secret.encode())


def _verified(secret: str, body: Union[bytes, str], headers: Mapping[str, Any]) -> Any:
    wh = _verifier(secret)
    lower = {str(k).lower(): v for k, v in headers.items()}
    picked: dict[str, str] = {}
    for name in _NAMES:
        value = lower.get(name)
        if value is None:
            raise WebhookVerificationError(f"missing {name} header")
        picked[name] = value if isinstance(value, str) else " ".join(value)
    try:
        return wh.verify(body, picked)
    except Exception as e:  # the package raises its own WebhookVerificationError (and ValueError on bad input)
        raise WebhookVerificationError(f"webhook refused: {e}") from e


def _is_event(event: Any) -> bool:
    return (
        isinstance(event, dict)
        and event.get("specversion") == "1.0"
        and isinstance(event.get("id"), str)
        and str(event.get("type", "")).startswith("switchboard.")
        and isinstance(event.get("subject"), str)
        and isinstance(event.get("data"), dict)
    )


def verify_webhook(secret: str, body: Union[bytes, str], headers: Mapping[str, Any]) -> SwitchboardEvent:
    """Verifies a Switchboard webhook request (signature over ``{id}.{timestamp}.{body}``, timestamps more than
    5 minutes off refused) and returns the CloudEvent. Raises :class:`WebhookVerificationError` otherwise.

    ``body`` must be the raw request body exactly as received; ``headers`` any mapping (case-insensitive
    lookup, e.g. ``request.headers`` of Flask, Django, Starlette or FastAPI).
    """
    event = _verified(secret, body, headers)
    if not _is_event(event):
        raise WebhookVerificationError("webhook refused: the body is not a Switchboard CloudEvent")
    return cast(SwitchboardEvent, event)


def verify_webhook_events(secret: str, body: Union[bytes, str], headers: Mapping[str, Any]) -> list[SwitchboardEvent]:
    """:func:`verify_webhook` for an endpoint that may get CloudEvents JSON batches (``WEBHOOK_BATCH_MAX`` > 1,
    and always with ``PRESENCE_WEBHOOKS=on``): returns the request's events, oldest first (one for a single
    structured event). Deduplicate on each event's ``id``.
    """
    parsed = _verified(secret, body, headers)
    events = parsed if isinstance(parsed, list) else [parsed]
    if not all(_is_event(e) for e in events):
        raise WebhookVerificationError("webhook refused: the body is not a Switchboard CloudEvent or batch of them")
    return cast("list[SwitchboardEvent]", events)

"""Tokens the Worker accepts: HS256 JWTs signed with its ``JWT_SECRET`` (with PyJWT)."""

from __future__ import annotations

import time
from typing import Any, Sequence

import jwt

from ._errors import SwitchboardError

MAX_GRANTS = 32  # the Worker's limit on `channels` / `publishChannels` entries


def _grants(name: str, items: Sequence[str] | None) -> list[str] | None:
    if items is None:
        return None
    out = list(items)
    if not out or len(out) > MAX_GRANTS or any(not isinstance(c, str) or not c for c in out):
        raise SwitchboardError("invalid_argument", f"{name} must be 1-{MAX_GRANTS} non-empty channel names or patterns")
    return out


def mint_token(
    secret: str,
    *,
    user_id: str | None = None,
    publish: bool = False,
    channels: Sequence[str] | None = None,
    publish_channels: Sequence[str] | None = None,
    expires_in: int = 3600,
    claims: dict[str, Any] | None = None,
) -> str:
    """Mints a token for a browser (``user_id``, optional channel grants) or a backend (``publish=True``).

    >>> client_token = mint_token(secret, user_id="alice", channels=["room:*"], expires_in=900)
    >>> publish_token = mint_token(secret, publish=True)
    """
    if not isinstance(secret, str) or not secret:
        raise SwitchboardError("invalid_argument", "secret (the Worker's JWT_SECRET) is required")
    if user_id is None and not publish:
        raise SwitchboardError("invalid_argument", "a token needs a user_id (client) or publish=True (backend)")
    if user_id is not None and (not isinstance(user_id, str) or not user_id.strip() or len(user_id.encode()) > 256):
        raise SwitchboardError("invalid_argument", "user_id must be a non-blank string of at most 256 bytes")
    if not isinstance(expires_in, int) or isinstance(expires_in, bool) or expires_in <= 0:
        raise SwitchboardError("invalid_argument", "expires_in must be a positive whole number of seconds")
    body: dict[str, Any] = dict(claims or {})
    if user_id is not None:
        body["userId"] = user_id
    if publish:
        body["scope"] = "publish"
    grants = _grants("channels", channels)
    if grants:
        body["channels"] = grants
    grants = _grants("publish_channels", publish_channels)
    if grants:
        body["publishChannels"] = grants
    now = int(time.time())
    body["iat"] = now
    body["exp"] = now + expires_in
    return jwt.encode(body, secret, algorithm="HS256", headers={"typ": "JWT"})

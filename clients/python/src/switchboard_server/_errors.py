"""Errors: every failure is a :class:`SwitchboardError` with the server's stable ``error`` code."""

from __future__ import annotations

from typing import Any


class SwitchboardError(Exception):
    """An HTTP error answer from the Worker (``code`` is its ``error`` field, ``status`` the HTTP status),
    or a failure with no answer: ``network_error`` / ``request_timeout`` (``status`` 0) after the last retry,
    ``invalid_response`` (not the JSON the API promises), ``invalid_argument`` (caught before any request).
    """

    def __init__(self, code: str, message: str, *, status: int = 0, body: Any = None, attempts: int = 0) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status
        self.body = body
        self.attempts = attempts

    @property
    def retryable(self) -> bool:
        """Whether the same request could succeed later (network errors, timeouts, 408, 429 and 5xx)."""
        if self.status == 0:
            return self.code in ("network_error", "request_timeout")
        return is_retryable_status(self.status, self.code)

    def __repr__(self) -> str:
        return f"SwitchboardError(code={self.code!r}, status={self.status}, message={self.message!r})"


class WebhookVerificationError(Exception):
    """A webhook request that failed verification (bad or missing signature, stale timestamp, not an event)."""


def is_retryable_status(status: int, code: str | None = None) -> bool:
    """408, 429 and 5xx, except a misconfigured server (a wrong setting: retrying cannot fix it)."""
    if status in (408, 429):
        return True
    return 500 <= status <= 599 and status != 501 and code != "server_misconfigured"

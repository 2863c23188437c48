"""Resume tokens: a call whose connection dropped may be taken up again within a window.

Each `ready` carries a fresh token. A token is unguessable (`secrets`), single-use (the
resumed call's `ready` carries the next one), and bound to the API key the call connected
with (only a hash of it is kept). The call itself waits in the ticker meanwhile (its slot
and KV cache kept, the caller's side filled with silence on the clock: server/ticker.py);
this book only says which call a token opens, and why not when it opens none.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

from server.session import CallSession
from streaming.wire import ErrorCode, ProtocolError


def _key_hash(key: str | None) -> bytes:
    return hashlib.sha256((key or "").encode()).digest()


@dataclass(slots=True)
class _Ticket:
    session: CallSession
    key: bytes  # hash of the API key the call connected with ("" when keys are off)


class ResumeBook:
    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._tickets: dict[str, _Ticket] = {}

    def new_token(self) -> str | None:
        """A token to tell a client before its call is admitted (a Realtime session's is in
        `session.created`); None when resuming is off (`resume_window_s` 0)."""
        return secrets.token_urlsafe(24) if self.window_s > 0 else None

    def issue(self, session: CallSession, key: str | None, token: str | None = None) -> str | None:
        """A new token for `session` (or `token`, from `new_token`); its earlier ones stop
        working, and so do those of calls that ended (the book holds live calls only)."""
        return self.issue_for_hash(session, _key_hash(key), token)

    def issue_for_hash(
        self, session: CallSession, key_hash: bytes, token: str | None = None
    ) -> str | None:
        """`issue`, for a call whose key is known by its hash only (moved from a peer)."""
        self.forget(session)
        self._tickets = {t: k for t, k in self._tickets.items() if not k.session.done.is_set()}
        token = token or self.new_token()
        if token is None:
            return None
        self._tickets[token] = _Ticket(session, key_hash)
        session.resume_token = token
        return token

    def key_hash(self, session: CallSession) -> bytes:
        """The hash of the key `session`'s token is bound to (to move it to a peer)."""
        ticket = self._tickets.get(session.resume_token or "")
        return ticket.key if ticket is not None else _key_hash(None)

    def forget(self, session: CallSession) -> None:
        if session.resume_token is not None:
            self._tickets.pop(session.resume_token, None)
            session.resume_token = None

    def claim(self, token: str, key: str | None) -> CallSession:
        """The waiting call `token` opens, now taken off the book; ProtocolError saying why
        not (unknown or used, another key, the call still connected, the window passed)."""
        ticket = self._tickets.get(token)
        if ticket is None:
            raise ProtocolError(
                ErrorCode.RESUME_FAILED, "unknown resume token (a token resumes a call once)"
            )
        if not hmac.compare_digest(ticket.key, _key_hash(key)):
            raise ProtocolError(
                ErrorCode.RESUME_FAILED, "the resume token belongs to another API key"
            )
        s = ticket.session
        if s.detached_at is None and not s.done.is_set():
            raise ProtocolError(
                ErrorCode.RESUME_FAILED,
                "the call is still connected: a token resumes a call whose connection dropped",
            )
        if s.done.is_set() or time.monotonic() - s.detached_at > self.window_s:  # type: ignore[operator]
            self.forget(s)
            raise ProtocolError(
                ErrorCode.RESUME_FAILED,
                f"the call ended: a dropped call may be resumed within {self.window_s:g} s",
            )
        del self._tickets[token]
        s.resume_token = None
        return s

"""The dashboard's sign-in session and its CSRF token, both in signed cookies.

Signing in with an API key sets `lorafleet_session`: `base64url(JSON) "." HMAC-SHA256(secret, JSON)`,
HTTP-only, `SameSite=Strict`, path `/ui`. It holds who signed in (the key's id, or `admin`), the
tenant, when it expires and the session's CSRF token, never the key itself; every page checks the
signature and expiry here, then the key (`Registry.tenants.live_key`), so revoking a key ends its
sessions at once.

CSRF: every form carries the session's token in a hidden `csrf_token` field and every POST compares it
(in constant time) with the one in the signed cookie; a page of another site can neither read the
token nor, with `SameSite=Strict`, send the cookie. The sign-in form, before any session exists, uses
the same scheme with a short-lived signed `lorafleet_signin` cookie.

The secret is the server's `ui_secret` setting; unset, a random one per process (sessions then end
when the server restarts, and replicas need the setting to share them).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import asdict, dataclass

SESSION_COOKIE = "lorafleet_session"
SIGNIN_COOKIE = "lorafleet_signin"
SESSION_SECONDS = 8 * 3600
SIGNIN_SECONDS = 3600
ADMIN = "admin"


@dataclass(frozen=True)
class UiSession:
    """A signed-in browser: `key_id` (or `admin`), the tenant it acts for (None: the admin's own pages)."""

    key_id: str
    tenant_id: str | None
    csrf: str
    expires: float

    @property
    def is_admin(self) -> bool:
        return self.key_id == ADMIN


class Signer:
    """Signs and reads the dashboard's cookies with one secret."""

    def __init__(self, secret: str | None) -> None:
        self._secret = (secret or secrets.token_urlsafe(32)).encode()

    def new_session(self, key_id: str, tenant_id: str | None) -> tuple[UiSession, str]:
        """A fresh session (new CSRF token) and its cookie value."""
        session = UiSession(key_id, tenant_id, secrets.token_urlsafe(24), time.time() + SESSION_SECONDS)
        return session, self._sign(asdict(session))

    def read_session(self, cookie: str | None) -> UiSession | None:
        """The session in `cookie`, or None when it is missing, forged, malformed or expired."""
        fields = self._read(cookie) or {}
        key_id, tenant_id, csrf, expires = (fields.get(k) for k in ("key_id", "tenant_id", "csrf", "expires"))
        if not (isinstance(key_id, str) and isinstance(csrf, str) and _fresh(expires)):
            return None
        if tenant_id is not None and not isinstance(tenant_id, str):
            return None
        assert isinstance(expires, float)
        return UiSession(key_id, tenant_id, csrf, expires)

    def new_signin(self) -> tuple[str, str]:
        """The sign-in form's CSRF token and the cookie that vouches for it."""
        token = secrets.token_urlsafe(24)
        return token, self._sign({"csrf": token, "expires": time.time() + SIGNIN_SECONDS})

    def signin_token(self, cookie: str | None) -> str | None:
        """The CSRF token the sign-in cookie vouches for, if it is genuine and fresh."""
        fields = self._read(cookie) or {}
        token = fields.get("csrf")
        return token if isinstance(token, str) and _fresh(fields.get("expires")) else None

    def _sign(self, fields: dict[str, object]) -> str:
        body = base64.urlsafe_b64encode(json.dumps(fields, sort_keys=True).encode()).decode().rstrip("=")
        return f"{body}.{self._mac(body)}"

    def _read(self, cookie: str | None) -> dict[str, object] | None:
        if not cookie or cookie.count(".") != 1:
            return None
        body, mac = cookie.split(".")
        if not hmac.compare_digest(mac, self._mac(body)):
            return None
        try:
            fields = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        except ValueError:
            return None
        return fields if isinstance(fields, dict) else None

    def _mac(self, body: str) -> str:
        return hmac.new(self._secret, body.encode(), hashlib.sha256).hexdigest()


def _fresh(expires: object) -> bool:
    return isinstance(expires, float) and expires > time.time()


def same_token(sent: object, expected: str | None) -> bool:
    """Whether a form's `csrf_token` is the expected one (constant-time; a missing one never is)."""
    return isinstance(sent, str) and expected is not None and hmac.compare_digest(sent, expected)

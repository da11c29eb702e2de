"""Bearer-token authentication with roles (viewer < operator < admin).

Tokens are configured as SHA-256 digests (or as plain tokens hashed at load, for demos); the API
compares digests in constant time and never keeps a plain token. With no token configured the
API serves viewers anonymously and refuses every write, and it listens on a loopback address only
(the settings refuse anything else); once any token is configured, every data route needs one.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Literal

from gateway.settings import ApiToken

__all__ = ["ANONYMOUS", "ROLES", "Caller", "TokenBook"]

Role = Literal["viewer", "operator", "admin"]
ROLES: dict[str, int] = {"viewer": 0, "operator": 1, "admin": 2}


@dataclass(frozen=True, slots=True)
class Caller:
    name: str
    role: Role
    anonymous: bool = False

    def may(self, role: Role) -> bool:
        return ROLES[self.role] >= ROLES[role]


#: Who calls when no token is configured: a viewer (the API then listens on loopback only).
ANONYMOUS = Caller("anonymous", "viewer", anonymous=True)


class TokenBook:
    def __init__(self, tokens: list[ApiToken]) -> None:
        self._by_digest = [(t.digest, Caller(t.name, t.role)) for t in tokens]

    @property
    def open(self) -> bool:
        return not self._by_digest

    def lookup(self, authorization: str | None) -> Caller | None:
        """The caller a request's ``Authorization`` header names, or None (no or unknown token).
        With no tokens configured everyone is :data:`ANONYMOUS`, a viewer: reads only."""
        if self.open:
            return ANONYMOUS
        if not authorization or not authorization.lower().startswith("bearer "):
            return None
        digest = hashlib.sha256(authorization[7:].strip().encode()).hexdigest()
        found = None
        for known, caller in self._by_digest:
            if hmac.compare_digest(known, digest):
                found = caller
        return found

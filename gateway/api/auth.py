"""Bearer-token authentication with roles (viewer < operator < admin).

Tokens are configured as SHA-256 digests (or as plain tokens hashed at load, for demos); the API
compares digests in constant time and never keeps a plain token. With no token configured the
API is open (the default listens on loopback only); once any token is configured, every data
route needs one.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Literal

from gateway.settings import ApiToken

__all__ = ["ROLES", "Caller", "TokenBook"]

Role = Literal["viewer", "operator", "admin"]
ROLES: dict[str, int] = {"viewer": 0, "operator": 1, "admin": 2}


@dataclass(frozen=True, slots=True)
class Caller:
    name: str
    role: Role

    def may(self, role: Role) -> bool:
        return ROLES[self.role] >= ROLES[role]


class TokenBook:
    def __init__(self, tokens: list[ApiToken]) -> None:
        self._by_digest = [(t.digest, Caller(t.name, t.role)) for t in tokens]

    @property
    def open(self) -> bool:
        return not self._by_digest

    def lookup(self, authorization: str | None) -> Caller | None:
        if self.open:
            return Caller("anonymous", "admin")
        if not authorization or not authorization.lower().startswith("bearer "):
            return None
        digest = hashlib.sha256(authorization[7:].strip().encode()).hexdigest()
        found = None
        for known, caller in self._by_digest:
            if hmac.compare_digest(known, digest):
                found = caller
        return found

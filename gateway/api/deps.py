"""What the routes depend on: the gateway's context, the caller and its role, and reads of the store.

Routes declare these as parameters (``api: Api``, ``_: Viewer``, ``who: Operator``); FastAPI resolves
them before a route's code runs, so a caller without a valid token gets 401 and one whose role is
too low 403, whatever the request asks for.

The API never reaches into the pipeline's adapters: it reads the store through connections of its
own (:meth:`ApiState.store`, read-only) and acts through the two callables the pipeline gives it in
:class:`ApiContext` (the committer writes; the API waits for the records it produced).
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request

from gateway.api.auth import Caller, Role, TokenBook
from gateway.api.guard import AuthFailures
from gateway.api.sandbox import Sandbox
from gateway.api.schemas import TIME_MAX, TIME_MIN
from gateway.errors import ConfigError
from gateway.health import Health
from gateway.profiles.loader import Catalog
from gateway.settings import GatewaySettings
from gateway.store.sqlite import Store

__all__ = ["ActFn", "Admin", "AdminFn", "Api", "ApiContext", "ApiState", "Operator", "Viewer", "epoch_ms"]

#: ``(kind, subject_id, action, actor, note, params)`` -> the transition bodies the action produced.
ActFn = Callable[[str, str, str, str, str, dict[str, Any]], Awaitable[list[dict[str, Any]]]]
#: ``(op, args)``: ``override``, ``inspection``, ``activate_profile``.
AdminFn = Callable[[str, dict[str, Any]], Awaitable[Any]]


@dataclass
class ApiContext:
    """What the API needs from the running gateway (set by the pipeline)."""

    settings: GatewaySettings
    health: Health
    catalog: Callable[[], Catalog]
    act: ActFn | None = None  # (kind, id, action, actor, note, params) -> record bodies
    admin: AdminFn | None = None  # site overrides, profile activation
    sources: Callable[[], dict[str, bool | None]] = field(default_factory=lambda: dict)
    static_dir: Path | None = None
    sandbox: Sandbox | None = None  # where profile dry runs run (a worker process); made on demand


class ApiState:
    """One app's state: its context, token book, failed-login log, dry-run sandbox and open streams."""

    def __init__(self, ctx: ApiContext) -> None:
        s = ctx.settings
        self.ctx = ctx
        self.settings = s
        self.tokens = TokenBook(s.api.tokens)
        self.failures = AuthFailures()
        self.sandbox = ctx.sandbox or Sandbox(timeout_s=s.api.dry_run_timeout_s)
        self.streams: dict[str, int] = {}  # open live streams per caller

    def catalog(self) -> Catalog:
        return self.ctx.catalog()

    @contextlib.contextmanager
    def store(self) -> Iterator[Store]:
        """A read-only connection of the request's own; 503 when there is no store (yet)."""
        try:
            st = Store(self.settings.store.path, readonly=True).open()
        except ConfigError as exc:
            raise HTTPException(503, "the store is not ready") from exc
        try:
            yield st
        finally:
            st.close()


def _api(request: Request) -> ApiState:
    state: ApiState = request.app.state.api
    return state


Api = Annotated[ApiState, Depends(_api)]


def _caller(request: Request, api: Api) -> Caller:
    c = api.tokens.lookup(request.headers.get("authorization"))
    if c is None:
        client = request.client.host if request.client else "?"
        api.failures.note(client, request.url.path)
        raise HTTPException(401, "a valid bearer token is required", headers={"WWW-Authenticate": "Bearer"})
    return c


def _need(role: Role) -> Callable[[Caller], Caller]:
    def check(c: Annotated[Caller, Depends(_caller)]) -> Caller:
        if not c.may(role):
            if c.anonymous:
                raise HTTPException(
                    401,
                    "no API tokens are configured, so the API is read-only: configure api.tokens to act",
                    headers={"WWW-Authenticate": "Bearer"},
                )
            raise HTTPException(403, f"role {c.role} may not do this; it needs {role}")
        return c

    return check


Viewer = Annotated[Caller, Depends(_need("viewer"))]
Operator = Annotated[Caller, Depends(_need("operator"))]
Admin = Annotated[Caller, Depends(_need("admin"))]


def epoch_ms(dt: datetime | None) -> int | None:
    """Epoch ms of a time from a request (naive means UTC), or 422 when it is outside 1970..2999."""
    if dt is None:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    if not TIME_MIN <= dt <= TIME_MAX:
        raise HTTPException(422, f"time {dt.isoformat()} is outside 1970..2999")
    return int(dt.timestamp() * 1000)

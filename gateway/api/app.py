"""The FastAPI application: middleware, error handlers, the routes of :mod:`gateway.api.routes` and the
dashboard's static files. :class:`~gateway.api.server.ApiServer` serves it.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse

from gateway.api.deps import ApiContext, ApiState
from gateway.api.guard import Guard
from gateway.api.routes import ROUTERS

__all__ = ["DESCRIPTION", "create_app"]

logger = logging.getLogger(__name__)

#: What ``/docs`` and ``/openapi.json`` say about the API.
DESCRIPTION = """The firegw ops API: read what the gateway's store holds, and act on fire events (警情) and
hazards (隐患).

Every route needs a bearer token once `api.tokens` are configured (roles: viewer < operator < admin); with
none configured the API serves viewers only, on a loopback address.

- `/healthz`, `/readyz`, `/metrics` (Prometheus text), `/api/v1/stats`, `/api/v1/whoami`
- `/api/v1/sites`, `/api/v1/sites/{id}`, `POST /api/v1/sites/{id}/override|inspection`
- `/api/v1/devices`, `/api/v1/devices/{id}`, `/api/v1/readings`, `/api/v1/dead-letters`
- `/api/v1/events`, `/api/v1/events/{id}`, `POST /api/v1/events/{id}/acknowledge|arrive|resolve`
- `/api/v1/hazards`, `/api/v1/hazards/{id}`, `POST /api/v1/hazards/{id}/confirm|dispatch|start|rectified|close|reject`
- `/api/v1/profiles`, `POST /api/v1/profiles/validate|activate`
- `/api/v1/stream`: server-sent events (every transition, and a beat)
"""

#: Routes whose work a client controls (a dry run in the sandbox): refused with 429 before the body is read.
_SANDBOXED = ("/api/v1/profiles/validate", "/api/v1/profiles/activate")


def create_app(ctx: ApiContext) -> FastAPI:
    s = ctx.settings
    app = FastAPI(
        title="firegw ops API",
        version="1",
        description=DESCRIPTION,
        docs_url="/docs" if s.api.docs else None,
        redoc_url=None,
        swagger_ui_parameters={"syntaxHighlight": False},
        openapi_tags=[{"name": "workflow", "description": "fire events (警情) and hazards (隐患)"}],
    )
    api = app.state.api = ApiState(ctx)
    if s.api.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=s.api.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )

    def admit(path: str, auth: str | None) -> str | None:
        if path in _SANDBOXED:
            who = api.tokens.lookup(auth)
            return api.sandbox.refusal(who.name if who is not None else "")
        return None

    app.add_middleware(
        Guard,
        authenticated=lambda auth: api.tokens.lookup(auth) is not None,
        max_body=s.api.max_body_bytes,
        failures=api.failures,
        admit=admit,
    )
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(Exception, _unhandled)
    for router in ROUTERS:
        app.include_router(router)
    if ctx.static_dir is not None and ctx.static_dir.is_dir():
        from fastapi.staticfiles import StaticFiles

        app.mount("/", StaticFiles(directory=ctx.static_dir, html=True), name="dashboard")
    return app


async def _invalid(request: Request, exc: Exception) -> JSONResponse:
    # the offending input is not echoed: it may be huge, or not even encodable (a lone surrogate)
    assert isinstance(exc, RequestValidationError)
    detail = [
        {
            "loc": [str(p)[:100] for p in err.get("loc", ())],
            "msg": str(err.get("msg", ""))[:300],
            "type": str(err.get("type", "")),
        }
        for err in exc.errors()[:20]
    ]
    return JSONResponse({"detail": detail}, status_code=422)


async def _unhandled(request: Request, exc: Exception) -> JSONResponse:
    logger.error("api: %s %s failed: %s", request.method, request.url.path[:200], exc, exc_info=exc)
    return JSONResponse({"detail": "internal error; it is logged"}, status_code=500)

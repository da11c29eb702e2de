"""Device profiles: the list in use, a dry run of a pasted profile (in the sandbox process, see
:mod:`gateway.api.sandbox`), and activation without a restart."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException

from gateway.api.auth import Caller
from gateway.api.deps import Admin, Api, ApiState, Viewer
from gateway.api.sandbox import SandboxBusy, SandboxLimit
from gateway.api.schemas import REJECTED, Activation, DryRun, ProblemsError, ProfileIn, ProfileSummary, errors
from gateway.errors import ConfigError

__all__ = ["router"]

router = APIRouter(tags=["profiles"], responses=errors(401))
_DRY_RUN_ERRORS = {**errors(413, 429), **REJECTED}


@router.get("/api/v1/profiles")
def profiles(api: Api, _: Viewer) -> list[ProfileSummary]:
    cat = api.catalog()
    used: dict[str, int] = {}
    for d in cat.inventory.devices:
        used[d.profile] = used.get(d.profile, 0) + 1
    return [
        ProfileSummary(
            profile=p.profile,
            version=p.version,
            kind=p.kind,
            title_zh=p.title.zh,
            title_en=p.title.en,
            transport=p.transport,
            points=len(p.points),
            rules=len(p.rules),
            devices=used.get(name, 0),
        )
        for name, p in sorted(cat.profiles.items())
    ]


async def _dry_run(api: ApiState, body: ProfileIn, who: Caller) -> dict[str, Any]:
    try:
        out = await api.sandbox.dry_run(body.profile_yaml, body.sample, who=who.name)
    except SandboxBusy as exc:
        raise HTTPException(429, f"dry runs are busy: {exc}", headers={"Retry-After": "2"}) from exc
    except SandboxLimit as exc:
        raise HTTPException(422, {"valid": False, "problems": [f"profile: (file): {exc}"]}) from exc
    if out["limit"]:
        raise HTTPException(422, {"valid": False, "problems": out["problems"]})
    return out


@router.post("/api/v1/profiles/validate", responses=_DRY_RUN_ERRORS)
async def validate(api: Api, body: ProfileIn, who: Viewer) -> DryRun:
    """Dry run in a sandbox process (limits on size, nesting, time and memory)."""
    out = await _dry_run(api, body, who)
    return DryRun.model_validate(
        {"valid": out["valid"], "profile": out["profile"], "problems": out["problems"], "readings": out["readings"]}
    )


@router.post(
    "/api/v1/profiles/activate",
    responses={
        **_DRY_RUN_ERRORS,
        **errors(403, 503),
        409: {"model": ProblemsError, "description": "the gateway could not load the profile set with it"},
    },
)
async def activate(api: Api, body: ProfileIn, who: Admin) -> Activation:
    out = await _dry_run(api, body, who)
    if not out["valid"] or out["profile"] is None:
        raise HTTPException(422, {"valid": False, "problems": out["problems"]})
    if api.ctx.admin is None:
        raise HTTPException(503, "the gateway is not running")
    try:
        await api.ctx.admin("activate_profile", {"name": out["profile"], "yaml": body.profile_yaml, "actor": who.name})
    except ConfigError as exc:
        raise HTTPException(409, {"valid": False, "problems": exc.problems}) from exc
    return Activation.model_validate(
        {"activated": out["profile"], "version": out["version"], "readings": out["readings"]}
    )

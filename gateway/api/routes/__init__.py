"""The API's routes, one module per resource; :data:`ROUTERS` in the order the app includes them."""

from __future__ import annotations

from fastapi import APIRouter

from gateway.api.routes import devices, health, profiles, sites, stream, workflow

__all__ = ["ROUTERS"]

ROUTERS: tuple[APIRouter, ...] = (
    health.router,
    sites.router,
    devices.router,
    workflow.router,
    profiles.router,
    stream.router,
)

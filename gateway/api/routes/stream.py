"""The live stream, ``/api/v1/stream``: server-sent events, one ``transition`` per workflow transition as
it is committed (its ``data`` is a :class:`~gateway.api.schemas.Transition`), and a ``beat`` every 5 s."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import StreamingResponse

from gateway.api.deps import Api, ApiState, Viewer
from gateway.api.schemas import errors
from gateway.store.workflow import WorkflowStore

__all__ = ["router"]

router = APIRouter(tags=["workflow"])

#: The stream as OpenAPI 3.2 describes server-sent events (``itemSchema``: one event).
_EVENTS: dict[str, Any] = {
    "description": "server-sent events: `transition` (`data`: a Transition as JSON, `id`: its sequence number) "
    "and `beat` (`data`: `{}`) every 5 s; `retry: 2000` first",
    "content": {
        "text/event-stream": {
            "schema": {"type": "string"},
            "itemSchema": {
                "type": "object",
                "required": ["event", "data"],
                "properties": {
                    "event": {"type": "string", "enum": ["transition", "beat"]},
                    "id": {"type": "string"},
                    "data": {
                        "type": "string",
                        "contentMediaType": "application/json",
                        "contentSchema": {"$ref": "#/components/schemas/Transition"},
                    },
                    "retry": {"type": "integer", "minimum": 0},
                },
            },
        }
    },
}


@router.get("/api/v1/stream", response_class=StreamingResponse, responses={200: _EVENTS, **errors(401, 429)})
async def stream(api: Api, request: Request, caller_: Viewer) -> StreamingResponse:
    """Server-sent events; at most ``api.max_streams_per_token`` at once per token (429 beyond)."""
    key = caller_.name
    streams = api.streams
    if streams.get(key, 0) >= api.settings.api.max_streams_per_token:
        raise HTTPException(429, f"{key} already has {streams[key]} streams open", headers={"Retry-After": "5"})
    streams[key] = streams.get(key, 0) + 1

    async def gen() -> AsyncIterator[bytes]:
        try:
            async for chunk in _events(api, request):
                yield chunk
        finally:
            streams[key] -= 1
            if streams[key] <= 0:
                del streams[key]

    return StreamingResponse(
        gen(), media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )


async def _events(api: ApiState, request: Request) -> AsyncIterator[bytes]:
    def last_seq() -> int:
        with api.store() as st:
            row = st.conn.execute("SELECT coalesce(max(seq), 0) FROM workflow_events").fetchone()
            return int(row[0])

    def since(seq: int) -> list[tuple[int, dict[str, Any]]]:
        with api.store() as st:
            return WorkflowStore(st.conn).events_since(seq)

    seq = await asyncio.to_thread(last_seq)
    yield b"retry: 2000\n\n"
    beat = 0.0
    while not await request.is_disconnected():
        rows = await asyncio.to_thread(since, seq)
        for seq, body in rows:
            yield f"event: transition\nid: {seq}\ndata: {json.dumps(body, ensure_ascii=False)}\n\n".encode()
        if time.monotonic() - beat > 5:
            beat = time.monotonic()
            yield b"event: beat\ndata: {}\n\n"
        await asyncio.sleep(0.25)

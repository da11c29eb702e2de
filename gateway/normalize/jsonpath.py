"""Compiled JSON field paths: ``a.b[0].c`` becomes a tuple of keys and indices, walked without parsing."""

from __future__ import annotations

import re

__all__ = ["MISSING", "compile_path", "get_path"]

MISSING = object()
_TOKEN = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)|\[(\d+)\]")


def compile_path(path: str) -> tuple[str | int, ...]:
    out: list[str | int] = []
    for part in path.split("."):
        for m in _TOKEN.finditer(part):
            out.append(m.group(1) if m.group(1) is not None else int(m.group(2)))
    return tuple(out)


def get_path(doc: object, path: tuple[str | int, ...]) -> object:
    """The value at ``path``, or :data:`MISSING`."""
    cur = doc
    for key in path:
        if isinstance(key, str):
            if not isinstance(cur, dict):
                return MISSING
            cur = cur.get(key, MISSING)
            if cur is MISSING:
                return MISSING
        else:
            if not isinstance(cur, list) or key >= len(cur):
                return MISSING
            cur = cur[key]
    return cur

"""The profile dry run: validate a pasted profile and decode a sample with it. Pure (no I/O).

It runs in the sandbox's worker process (:mod:`gateway.api.sandbox`), never in the gateway's, because
what it parses comes from a client: YAML nested 100,000 deep, aliases that multiply, a huge sample.
Everything it returns is plain data that crosses a pipe.
"""

from __future__ import annotations

import time
from typing import Any

from pydantic import ValidationError

from gateway.errors import ConfigError, DecodeError

__all__ = ["MAX_DEPTH", "MAX_NODES", "dry_run"]

#: Deepest nesting a profile may have (a real one is under 10 levels).
MAX_DEPTH = 32
#: Most YAML nodes a profile may hold (the biggest shipped one has about 1,000).
MAX_NODES = 50_000


def dry_run(profile_yaml: str, sample: str | None) -> dict[str, Any]:
    """``{"valid", "profile", "version", "problems", "readings", "limit"}`` for a profile and an optional
    sample; ``limit`` is true when the profile went past a limit (nesting, size) and was not read."""
    from gateway.profiles.loader import _check_registers, format_validation_error, parse_yaml
    from gateway.profiles.models import Profile
    from gateway.rules.spec import validate_rules

    out: dict[str, Any] = {
        "valid": False,
        "profile": None,
        "version": None,
        "problems": [],
        "readings": [],
        "limit": False,
    }
    try:
        data = parse_yaml(profile_yaml, "profile", max_depth=MAX_DEPTH, max_nodes=MAX_NODES)
    except ConfigError as exc:
        out["problems"] = exc.problems
        out["limit"] = any("nested" in p or "more than" in p for p in exc.problems)  # past a limit: 422
        return out
    if not isinstance(data, dict):
        out["problems"] = ["profile: (top): expected a mapping"]
        return out
    try:
        prof = Profile.model_validate(data)
    except ValidationError as exc:
        out["problems"] = format_validation_error("profile", exc)
        return out
    out["profile"], out["version"] = prof.profile, prof.version
    problems = [f"profile: {p}" for p in _check_registers(prof) + validate_rules(prof.rules, prof)]
    if sample is not None and not problems:
        now = int(time.time() * 1000)
        try:
            from gateway.normalize.sample import decode_sample

            rs = decode_sample(prof, sample, now)
        except DecodeError as exc:
            problems.append(f"sample: {exc}")
        except Exception as exc:  # the decoders contain their failures; this is the last guard
            problems.append(f"sample: could not be decoded: {type(exc).__name__}: {exc}"[:300])
        else:
            out["readings"] = [
                {
                    "metric": r.metric,
                    "value": r.value,
                    "unit": r.unit,
                    "quality": r.quality.value,
                    "class": r.point_class.value,
                }
                for r in rs
            ]
    out["problems"] = problems
    out["valid"] = not problems
    return out

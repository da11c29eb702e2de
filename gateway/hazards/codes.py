"""Site risk codes (red / yellow / green) from the open hazards of a site (domain.md §7.3 [P]/[D]).

Rules, first match wins:

1. A manual override that has not expired sets the code (it needs a reason and an actor, and every
   set/clear is an audited record). An override with ``stop_business`` (停业/停产整改) is red.
2. **Red** (停业/停产整改, inspect daily): any open *confirmed* ``critical`` hazard, or any open
   confirmed ``major`` hazard past its rectification deadline.
3. **Yellow** (限期整改, inspect weekly): any other open confirmed hazard of severity ``minor`` or
   above (a ``major`` one, or a ``minor`` one, within or past its deadline).
4. **Green** (inspect monthly): no confirmed hazard of severity ``minor`` or above is open.

"Open" means not yet closed (销号): a hazard whose telemetry cleared but that nobody re-checked and
closed still counts, so green needs the acceptance record, not merely a healthy sensor.
"Confirmed" means a person confirmed it (states confirmed, dispatched, rectifying, rectified);
telemetry alone only *proposes* hazards, and proposed ones do not change the code, except hard rules
the site configures, which open confirmed. ``info`` hazards never change the code.

Inspection cadence: red daily, yellow weekly, green monthly (30 days); the next inspection is due one
cadence after the last one (or now, when the site was never inspected).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Literal

from gateway.errors import TransitionError
from gateway.hazards.lifecycle import Hazard, Transition, new_id

__all__ = ["CADENCE_S", "CodeOverride", "SiteCode", "clear_override", "set_override", "site_code"]

Code = Literal["red", "yellow", "green"]
Cadence = Literal["daily", "weekly", "monthly"]
CADENCE: dict[Code, Cadence] = {"red": "daily", "yellow": "weekly", "green": "monthly"}
CADENCE_S: dict[Cadence, int] = {"daily": 86_400, "weekly": 7 * 86_400, "monthly": 30 * 86_400}


@dataclass(frozen=True, slots=True)
class CodeOverride:
    """A person's override of a site's code, audited; ``until_ms`` None means until cleared."""

    site_id: str
    code: Code
    reason: str
    actor: str
    at_ms: int
    until_ms: int | None = None
    stop_business: bool = False

    def in_force(self, now_ms: int) -> bool:
        return self.until_ms is None or now_ms < self.until_ms


@dataclass(frozen=True, slots=True)
class SiteCode:
    """A site's code, why, and when it must next be inspected."""

    code: Code
    reason_zh: str
    reason_en: str
    cadence: Cadence
    cadence_s: int
    next_inspection_due_ms: int
    overridden: bool = False


def _code(
    code: Code, zh: str, en: str, now_ms: int, last_inspection_ms: int | None, overridden: bool = False
) -> SiteCode:
    cadence = CADENCE[code]
    base = now_ms if last_inspection_ms is None else last_inspection_ms
    return SiteCode(code, zh, en, cadence, CADENCE_S[cadence], base + CADENCE_S[cadence] * 1000, overridden)


def site_code(
    open_hazards: Iterable[Hazard], override: CodeOverride | None, now_ms: int, last_inspection_ms: int | None = None
) -> SiteCode:
    """The code of one site from its open hazards (see the module docstring for the rules)."""
    if override is not None and override.in_force(now_ms):
        code: Code = "red" if override.stop_business else override.code
        return _code(
            code,
            f"人工设定：{override.reason}（{override.actor}）",
            f"set by hand: {override.reason} ({override.actor})",
            now_ms,
            last_inspection_ms,
            True,
        )
    confirmed = [h for h in open_hazards if h.confirmed and h.severity != "info"]
    overdue = [h for h in confirmed if h.deadline_ms is not None and now_ms > h.deadline_ms]
    critical = [h for h in confirmed if h.severity == "critical"]
    if critical:
        return _code(
            "red",
            f"存在已确认的紧急隐患：{critical[0].title_zh}",
            f"confirmed critical hazard open: {critical[0].title_en}",
            now_ms,
            last_inspection_ms,
        )
    major_late = [h for h in overdue if h.severity == "major"]
    if major_late:
        return _code(
            "red",
            f"重大隐患逾期未整改：{major_late[0].title_zh}",
            f"major hazard past its deadline: {major_late[0].title_en}",
            now_ms,
            last_inspection_ms,
        )
    if confirmed:
        worst = max(confirmed, key=lambda h: (h.severity == "major", h in overdue))
        return _code(
            "yellow",
            f"存在限期整改隐患：{worst.title_zh}",
            f"hazard under deadline rectification: {worst.title_en}",
            now_ms,
            last_inspection_ms,
        )
    return _code("green", "无未销号的已确认隐患", "no confirmed hazard open", now_ms, last_inspection_ms)


def set_override(
    site_id: str,
    code: Code,
    reason: str,
    actor: str,
    now_ms: int,
    *,
    until_ms: int | None = None,
    stop_business: bool = False,
    id_factory: Callable[[], str] = new_id,
) -> tuple[CodeOverride, Transition]:
    """Override a site's code; returns the override and its audit record. Needs a reason and an actor."""
    if not reason.strip() or not actor.strip():
        raise TransitionError(f"site {site_id}: a code override needs a reason and an actor")
    if code not in CADENCE:
        raise TransitionError(f"site {site_id}: unknown code {code!r} (red, yellow, green)")
    if until_ms is not None and until_ms <= now_ms:
        raise TransitionError(f"site {site_id}: override expiry {until_ms} is not in the future")
    code = "red" if stop_business else code
    ov = CodeOverride(site_id, code, reason, actor, now_ms, until_ms, stop_business)
    return ov, Transition(id_factory(), "site", site_id, "override_set", now_ms, actor, reason, asdict(ov))


def clear_override(
    override: CodeOverride, actor: str, note: str, now_ms: int, *, id_factory: Callable[[], str] = new_id
) -> Transition:
    """End an override early; the audit record names who and why."""
    if not note.strip() or not actor.strip():
        raise TransitionError(f"site {override.site_id}: clearing an override needs a note and an actor")
    return Transition(id_factory(), "site", override.site_id, "override_cleared", now_ms, actor, note, asdict(override))

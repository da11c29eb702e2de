"""``firegw``: run the gateway, check profiles, and read the embedded store.

Exit codes: 0 success, 1 runtime failure, 2 bad input (config, profiles, arguments).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.errors import AuthenticationFailed, ConfigError, FiregwError
from gateway.settings import GatewaySettings, load_settings
from gateway.times import iso

__all__ = ["main"]

logger = logging.getLogger("firegw")


def _settings(args: argparse.Namespace) -> GatewaySettings:
    return load_settings(getattr(args, "config", None))


def _parse_time(text: str) -> int:
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ConfigError(f"--since: not an ISO 8601 time: {text!r}") from exc
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, ensure_ascii=False, indent=None, default=str))


# ---------------------------------------------------------------------------- run


def cmd_run(args: argparse.Namespace) -> int:
    settings = _settings(args)
    from gateway.logs import raise_file_limit, setup_logging

    setup_logging(settings.log_level)
    raise_file_limit()
    os.umask(0o077)  # the store, its WAL, activated profiles: readable by the gateway's user only
    from gateway.runtime.pipeline import Gateway

    gw = Gateway(settings)

    async def reload() -> None:
        from gateway.profiles.loader import load_catalog

        try:
            catalog = await asyncio.to_thread(load_catalog, settings.profiles_dir, settings.inventory)
        except ConfigError as exc:
            logger.error(
                "SIGHUP: profiles or inventory not valid; keeping the running set:\n%s", "\n".join(exc.problems)
            )
            return
        await gw.reload(catalog)
        logger.info(
            "SIGHUP: reloaded %d profiles, %d sites, %d devices",
            len(catalog.profiles),
            len(catalog.sites),
            len(catalog.devices),
        )

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        pending: set[asyncio.Task[None]] = set()

        def on_hup() -> None:
            task = loop.create_task(reload())
            pending.add(task)
            task.add_done_callback(pending.discard)

        loop.add_signal_handler(signal.SIGHUP, on_hup)
        await gw.run(stop)

    try:
        asyncio.run(main())
    except AuthenticationFailed as exc:
        logger.error("%s", exc)
        return 2
    return 0


# ---------------------------------------------------------------------------- profiles


def cmd_profiles_check(args: argparse.Namespace) -> int:
    from gateway.profiles.loader import check_paths

    paths = [Path(p) for p in args.paths] or [_settings(args).profiles_dir]
    problems = check_paths(paths)
    for line in problems:
        print(line)
    if problems:
        return 2
    print(f"ok: {', '.join(str(p) for p in paths)}", file=sys.stderr)
    return 0


def cmd_profiles_schema(args: argparse.Namespace) -> int:
    from gateway.profiles.loader import profile_json_schema

    sys.stdout.write(profile_json_schema())
    return 0


def cmd_profiles_try(args: argparse.Namespace) -> int:
    from gateway.normalize.sample import decode_sample
    from gateway.profiles.loader import load_profile
    from gateway.profiles.models import Profile

    settings = _settings(args)
    given = Path(args.profile)
    path = given if given.exists() else settings.profiles_dir / f"{args.profile}.yaml"
    profile: Profile = load_profile(path)
    sample = Path(args.sample).read_bytes() if args.sample != "-" else sys.stdin.buffer.read()
    now = int(time.time() * 1000)
    readings = decode_sample(profile, sample, now)
    out = [
        {
            "metric": r.metric,
            "value": r.value,
            "unit": r.unit,
            "ts": iso(r.ts_ms),
            "quality": r.quality.value,
            "class": r.point_class.value,
            "urgent": r.urgent,
        }
        for r in readings
    ]
    if args.json:
        _print_json(out)
    else:
        for o in out:
            print(f"{o['metric']:<24} {o['value']!s:>12} {o['unit']:<6} {o['quality']:<8} {o['class']}")
    return 0


# ---------------------------------------------------------------------------- store reads


def _store(settings: GatewaySettings) -> Any:
    from gateway.store.sqlite import Store

    return Store(settings.store.path, readonly=True).open()


def stats(settings: GatewaySettings) -> dict[str, Any]:
    with _store(settings) as store:
        out: dict[str, Any] = store.stats()
        extra = getattr(store, "workflow_stats", None)
        out.update(extra() if extra else {"hazards_open": 0, "events_open": 0})
        return out


def cmd_stats(args: argparse.Namespace) -> int:
    out = stats(_settings(args))
    if args.json:
        _print_json(out)
    else:
        for k, v in out.items():
            print(f"{k:<22} {v}")
    return 0


def _typer(settings: GatewaySettings) -> Any:
    """Booleans come back from SQLite as 0/1: cast with the device's profile when it can be loaded."""
    from gateway.profiles.loader import load_catalog

    try:
        catalog = load_catalog(settings.profiles_dir, settings.inventory)
    except (ConfigError, OSError):
        return lambda device, metric, value: value
    return catalog.typed


def cmd_readings(args: argparse.Namespace) -> int:
    since = _parse_time(args.since) if args.since else None
    settings = _settings(args)
    with _store(settings) as store:
        rows = store.readings(args.device, metric=args.metric, since_ms=since, limit=args.limit)
    typed = _typer(settings)
    out = [
        {
            "device_id": r.device_id,
            "site_id": r.site_id,
            "metric": r.metric,
            "value": typed(r.device_id, r.metric, r.value),
            "unit": r.unit,
            "ts": iso(r.ts_ms),
            "received_at": iso(r.received_at_ms),
            "quality": r.quality,
        }
        for r in rows
    ]
    if args.json:
        _print_json(out)
    else:
        for o in out:
            print(f"{o['ts']}  {o['metric']:<22} {o['value']!s:>12} {o['unit']:<6} {o['quality']}")
    return 0


def cmd_dead_letters(args: argparse.Namespace) -> int:
    with _store(_settings(args)) as store:
        rows = store.dead_letters(limit=args.limit)
    for r in rows:
        r["at"] = iso(r.pop("at_ms"))
    if args.json:
        _print_json(rows)
    else:
        for r in rows:
            print(f"{r['at']}  {r['source']}  {r['address']}  {r['reason']}")
    return 0


def _workflow_rows(args: argparse.Namespace, kind: str) -> list[dict[str, Any]]:
    from gateway.store.workflow import WorkflowStore, public_subject

    with _store(_settings(args)) as store:
        ws = WorkflowStore(store.conn)
        rows = (ws.fire_events if kind == "fire_event" else ws.hazards)(
            open_only=args.open, site_id=args.site, limit=args.limit
        )
        out = []
        for r in rows:
            pub = public_subject(kind, r)
            if args.trail:
                pub["trail"] = ws.trail(kind, r["fire_event_id" if kind == "fire_event" else "hazard_id"])
            out.append(pub)
        return out


def cmd_events(args: argparse.Namespace) -> int:
    rows = _workflow_rows(args, "fire_event")
    if args.json:
        _print_json(rows)
    else:
        for r in rows:
            where = " ".join(x for x in (r.get("building"), r.get("floor") and f"{r['floor']}F") if x)
            print(
                f"{r['opened_at']}  {r['state']:<12} {r['site_id']:<22} {r['device_id']:<16} {where:<12} {r['station']}"
            )
    return 0


def cmd_hazards(args: argparse.Namespace) -> int:
    rows = _workflow_rows(args, "hazard")
    if args.json:
        _print_json(rows)
    else:
        for r in rows:
            print(
                f"{r['opened_at']}  {r['state']:<10} {r['severity']:<8} {r['tier']:<12} {r['site_id']:<22} "
                f"{r['device_id']:<16} {r['title_zh']} / {r['title_en']}  x{r['count']}"
            )
    return 0


def cmd_sites(args: argparse.Namespace) -> int:
    from gateway.profiles.loader import load_catalog
    from gateway.sites import site_summaries
    from gateway.store.workflow import WorkflowStore

    settings = _settings(args)
    catalog = load_catalog(settings.profiles_dir, settings.inventory)
    with _store(settings) as store:
        rows = site_summaries(catalog, WorkflowStore(store.conn), int(time.time() * 1000))
    if args.site:
        rows = [r for r in rows if r["site_id"] == args.site]
    if args.json:
        _print_json(rows)
    else:
        for r in rows:
            print(
                f"{r['code']:<7} {r['site_id']:<24} {r['name']:<24} hazards {r['hazards_open']:<3} "
                f"next inspection {r['next_inspection_due']}  {r['reason_zh']}"
            )
    return 0


# ---------------------------------------------------------------------------- demo


def cmd_demo(args: argparse.Namespace) -> int:
    from simulators.demo import run_demo

    rc: int = run_demo(
        duration=args.duration, workdir=Path(args.workdir), devices=args.devices, rate=args.rate, workflow=args.workflow
    )
    return rc


# ---------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    # --config is accepted before or after the command: `firegw --config F run` and `firegw run --config F`
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config", type=Path, default=argparse.SUPPRESS, help="YAML config file (default: $FIREGW_CONFIG)"
    )
    parser = argparse.ArgumentParser(prog="firegw", description="Fire-safety IoT telemetry gateway", parents=[common])
    sub = parser.add_subparsers(dest="command", required=True)
    _add_parser = sub.add_parser

    def add_parser(name: str, **kw: Any) -> argparse.ArgumentParser:
        return _add_parser(name, parents=[common], **kw)

    sub.add_parser = add_parser  # type: ignore[method-assign]

    p = sub.add_parser("run", help="run the gateway in the foreground")
    p.set_defaults(fn=cmd_run)

    p = sub.add_parser("demo", help="the whole system on this machine: broker, simulators, gateway")
    p.add_argument("--duration", type=float, default=None, help="stop after this many seconds (default: Ctrl-C)")
    p.add_argument("--workdir", default="var/demo", help="where the demo keeps its store and broker files")
    p.add_argument("--devices", type=int, default=40)
    p.add_argument("--rate", type=float, default=1.0, help="messages per second per device")
    p.add_argument(
        "--workflow",
        default="record",
        choices=["record", "ack-resolve"],
        help="the simulated grid workflow: record what it gets, or also answer through the API",
    )
    p.set_defaults(fn=cmd_demo)

    prof = sub.add_parser("profiles", help="check, describe and try device profiles").add_subparsers(
        dest="profiles_command", required=True
    )
    _add_prof = prof.add_parser

    def add_prof(name: str, **kw: Any) -> argparse.ArgumentParser:
        return _add_prof(name, parents=[common], **kw)

    prof.add_parser = add_prof  # type: ignore[method-assign]
    p = prof.add_parser("check", help="validate profiles and inventory files or directories")
    p.add_argument("paths", nargs="*")
    p.set_defaults(fn=cmd_profiles_check)
    p = prof.add_parser("schema", help="print the JSON Schema of a profile")
    p.set_defaults(fn=cmd_profiles_schema)
    p = prof.add_parser("try", help="decode one sample payload (or register dump) with a profile")
    p.add_argument("profile", help="profile file, or a profile name in the profiles directory")
    p.add_argument("sample", help="file with the sample, or - for stdin")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_profiles_try)

    p = sub.add_parser("stats", help="counters read from the embedded store")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_stats)

    p = sub.add_parser("readings", help="readings of one device from the embedded store")
    p.add_argument("device")
    p.add_argument("--metric")
    p.add_argument("--since", help="ISO 8601 time")
    p.add_argument("--limit", type=int, default=1000)
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_readings)

    for name, fn, help_text in (
        ("events", cmd_events, "fire events (警情) from the embedded store"),
        ("hazards", cmd_hazards, "hazards (隐患) from the embedded store"),
    ):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--open", action="store_true", help="only the ones not resolved / closed")
        p.add_argument("--site")
        p.add_argument("--trail", action="store_true", help="include every transition")
        p.add_argument("--limit", type=int, default=1000)
        p.add_argument("--json", action="store_true")
        p.set_defaults(fn=fn)

    p = sub.add_parser("sites", help="sites with their red / yellow / green code and next inspection due")
    p.add_argument("--site")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_sites)

    p = sub.add_parser("dead-letters", help="input that could not be used, with the reason")
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_dead_letters)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        rc: int = args.fn(args)
        return rc
    except ConfigError as exc:
        for line in exc.problems:
            print(line, file=sys.stderr)
        return 2
    except FiregwError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""SIGHUP reloads profiles and inventory after validating them; a bad file keeps the running set."""

from __future__ import annotations

import shutil
import signal
from pathlib import Path

import yaml

from simulators.broker import Mosquitto
from tests.support import PROFILES, GatewayProc, run_fleet, store_stats, wait_for, write_inventory


def test_sighup_reload_validates_first(tmp_path: Path, broker: Mosquitto) -> None:
    profiles = tmp_path / "profiles"
    shutil.copytree(PROFILES, profiles)
    inv = tmp_path / "inventory.yaml"
    write_inventory(inv, 8)
    full = yaml.safe_load(inv.read_text(encoding="utf-8"))
    first = {"sites": full["sites"], "devices": full["devices"][:4]}
    inv.write_text(yaml.safe_dump(first, allow_unicode=True), encoding="utf-8")
    gw = GatewayProc(
        tmp_path / "gw",
        env={
            "FIREGW_MQTT__URL": broker.url,
            "FIREGW_INVENTORY": str(inv),
            "FIREGW_PROFILES_DIR": str(profiles),
            "FIREGW_MQTT__CLIENT_ID": "reload",
        },
    ).start()
    try:
        assert gw.proc is not None
        # a broken profile: reported, and the running set stays
        (profiles / "broken.yaml").write_text("profile: broken\nkind: x\n")
        gw.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "keeping the running set" in gw.log(), 10, "the bad reload reported")
        assert "broken.yaml: title: Field required" in gw.log()
        (profiles / "broken.yaml").unlink()
        # the full inventory: the four new devices are accepted without a restart
        inv.write_text(yaml.safe_dump(full, allow_unicode=True), encoding="utf-8")
        gw.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "SIGHUP: reloaded" in gw.log(), 10, "the reload")
        summary = run_fleet(broker.url, "--devices", "8", "--rate", "2", "--duration", "2")
        st = wait_for(
            lambda: store_stats(gw.db) if store_stats(gw.db).get("messages") == summary["sent"] else {},
            20,
            "every message accepted",
        )
        assert st["dead_letters"] == 0 and st["devices_seen"] == 8
    finally:
        assert gw.stop() == 0

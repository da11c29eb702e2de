"""The docs stay true: every example payload in device_profiles/README.md decodes to the readings
it lists, the shipped JSON Schema is current, and the README's configuration block is valid."""

from __future__ import annotations

import re

import pytest
import yaml

from gateway.normalize.json_decoder import JsonDecoder
from gateway.profiles.loader import load_profile, profile_json_schema
from gateway.settings import GatewaySettings
from tests.support import PROFILES, ROOT

_EXAMPLE = re.compile(r"<!-- example ([a-z0-9-]+) -->\s*```json\n(.*?)\n```\s*```text\n(.*?)\n```", re.S)


def _examples() -> list[tuple[str, str, str]]:
    text = (PROFILES / "README.md").read_text(encoding="utf-8")
    found = [(m.group(1), m.group(2), m.group(3)) for m in _EXAMPLE.finditer(text)]
    assert len(found) >= 8
    return found


def _parse_expected(block: str) -> list[tuple[str, object, str, str]]:
    out = []
    for line in block.strip().splitlines():
        name, _, rest = line.partition(" = ")
        parts = rest.split()
        raw = parts[0]
        value: object = {"true": True, "false": False}.get(raw)
        if value is None:
            value = float(raw) if "." in raw else int(raw)
        unit = parts[1] if len(parts) > 1 and parts[1] not in ("good", "suspect") else ""
        quality = parts[-1] if parts[-1] in ("good", "suspect") else "good"
        out.append((name, value, unit, quality))
    return out


@pytest.mark.parametrize(("profile", "payload", "expected"), _examples())
def test_readme_example_decodes_to_documented_readings(profile: str, payload: str, expected: str) -> None:
    dec = JsonDecoder(load_profile(PROFILES / f"{profile}.yaml"))
    readings = dec.decode(payload.encode(), "site", "dev", 1764400000000)
    got = [(r.metric, r.value, r.unit, r.quality.value) for r in readings]
    want = _parse_expected(expected)
    assert [g[0] for g in got] == [w[0] for w in want]
    for (gm, gv, gu, gq), (_wm, wv, wu, wq) in zip(got, want, strict=True):
        assert (gu, gq) == (wu, wq), gm
        assert type(gv) is type(wv), gm
        assert gv == pytest.approx(wv) if isinstance(wv, float) else gv == wv, gm


def test_profile_schema_is_current() -> None:
    assert (PROFILES / "_schema.json").read_text(encoding="utf-8") == profile_json_schema(), (
        "regenerate: firegw profiles schema > device_profiles/_schema.json"
    )


def _readme_blocks(lang: str) -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return re.findall(rf"```{lang}\n(.*?)\n```", text, re.S)


def test_readme_configuration_example_is_valid_and_complete() -> None:
    blocks = [b for b in _readme_blocks("yaml") if "mqtt:" in b and "store:" in b]
    assert blocks, "README shows a configuration example"
    data = yaml.safe_load(blocks[0])
    settings = GatewaySettings.model_validate(data)
    # every section of the settings appears in the example, so the README documents them all
    for section in ("mqtt", "store", "pipeline"):
        assert section in data, section
    assert settings.mqtt.url.startswith("mqtt")


def test_readme_shows_the_two_commands() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "./scripts/demo" in text and "./scripts/test" in text


def test_shipped_profiles_and_example_inventory_check_clean() -> None:
    from gateway.profiles.loader import check_paths

    assert check_paths([PROFILES, ROOT / "examples" / "inventory.yaml"]) == []


def test_readme_register_dump_decodes_as_documented() -> None:
    from gateway.normalize.registers import decode_dump

    text = (PROFILES / "README.md").read_text(encoding="utf-8")
    part = text.split("### Worked example: a cabinet register dump", 1)[1]
    dump = re.search(r"```\n(.*?)\n```", part, re.S)
    assert dump is not None
    got = {r.metric: r.value for r in decode_dump(load_profile(PROFILES / "fire-pump-cabinet.yaml"), dump.group(1), 0)}
    assert got["pump1_run"] is True and got["pump2_run"] is False and got["jockey_run"] is True
    assert (got["pump1_mode"], got["pump2_mode"], got["jockey_mode"]) == (1, 0, 1)
    assert got["outlet_pressure"] == pytest.approx(0.538)
    assert "suction_pressure" not in got  # sentinel 0x8000: no value
    assert got["voltage_l1_l2"] == pytest.approx(380.5)
    assert (got["inspection_runs"], got["jockey_starts"], got["pump1_run_time"]) == (52, 1234, 7200)
    assert got["last_start_time"] == pytest.approx(41.25)


def test_readme_code_traces_name_real_symbols() -> None:
    """Every ``file:symbol`` in the README (the code map's traces) exists, so the map stays true."""
    import ast

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    refs = re.findall(r"`([a-z_/]+\.py):([A-Za-z_][\w.]*)`", text)
    assert len(refs) >= 10, refs
    for path, symbol in refs:
        file = ROOT / "gateway" / path
        assert file.exists(), path
        tree = ast.parse(file.read_text(encoding="utf-8"))
        scope: list[ast.stmt] = tree.body
        for part in symbol.split("."):
            found = next(
                (
                    n
                    for n in scope
                    if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) and n.name == part
                ),
                None,
            )
            assert found is not None, f"{path}:{symbol}: no {part}"
            scope = found.body if isinstance(found, ast.ClassDef) else []


def test_readme_code_map_lists_every_module() -> None:
    """Every module and package of gateway/ appears in the README's code map."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = text.split("## Where things are (code map)", 1)[1].split("```", 2)[1]
    for f in sorted((ROOT / "gateway").rglob("*.py")):
        if f.name == "__init__.py" and f.parent == ROOT / "gateway":
            continue
        name = f.parent.name + "/" if f.name == "__init__.py" else f.stem
        assert name in block or f"{f.stem}.py" in block, f"{f.relative_to(ROOT)} is not in the README's code map"

"""The public surface: ``gateway.__all__`` is sorted, complete and importable, and ``import gateway`` is light."""

from __future__ import annotations

import json
import subprocess

import gateway
from tests.support import PYTHON, ROOT


def test_all_is_sorted_and_importable() -> None:
    assert gateway.__all__ == sorted(gateway.__all__)
    for name in gateway.__all__:
        assert getattr(gateway, name) is not None, name
    assert set(gateway.__all__) <= set(dir(gateway))
    assert gateway.__all__ == sorted(gateway._WHERE)


def test_every_public_name_is_listed() -> None:
    for name in gateway.__all__:
        getattr(gateway, name)
    public = {n for n in vars(gateway) if not n.startswith("_")}
    modules = {n for n in public if type(getattr(gateway, n)).__name__ == "module"}
    assert public - modules - {"annotations", "importlib", "TYPE_CHECKING", "Any"} == set(gateway.__all__)


HEAVY = ("paho", "pymodbus", "fastapi", "uvicorn", "httpx", "influxdb_client", "multiprocessing", "sqlite3")


def _loaded(statement: str) -> list[str]:
    code = f"import sys; {statement}; import json; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([PYTHON, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    mods: list[str] = json.loads(out.stdout)
    return [m for m in mods if m.split(".")[0] in HEAVY]


def test_import_gateway_is_light() -> None:
    assert _loaded("import gateway") == []


def test_the_pure_core_loads_no_runtime() -> None:
    assert (
        _loaded(
            "import gateway.rules.engine, gateway.normalize.router, gateway.normalize.registers, "
            "gateway.hazards.lifecycle, gateway.hazards.codes, gateway.profiles.loader"
        )
        == []
    )

"""``firegw demo`` as a newcomer runs it: the whole system comes up, a button press becomes a fire event,
it stops cleanly, no secret shows in any process's arguments, and the files holding them are private."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import time
from pathlib import Path

from tests.support import PYTHON, ROOT


def _cmdlines() -> list[str]:
    out = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                out.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
            except OSError:
                continue
    return out


def test_demo_runs_the_whole_system_and_keeps_its_secrets(tmp_path: Path) -> None:
    work = tmp_path / "demo"
    proc = subprocess.Popen(
        [PYTHON, "-m", "gateway.cli", "demo", "--duration", "24", "--workdir", str(work), "--devices", "20"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    tokens: list[str] = []
    leaked: list[str] = []
    deadline = time.monotonic() + 120
    for line in proc.stdout:
        lines.append(line)
        m = re.match(r"\s+(viewer|operator|admin) token:\s+(\S+)", line)
        if m:
            tokens.append(m.group(2))
        if "t=" in line and tokens:  # everything is running: look at every process's arguments once
            secret = (work / "gateway.yaml").read_text()
            leaked = leaked or [c[:200] for c in _cmdlines() for t in tokens if t in c]
            assert all(t in secret for t in tokens)
        assert time.monotonic() < deadline, "".join(lines)
    assert proc.wait(60) == 0, "".join(lines)
    text = "".join(lines)
    assert "dashboard: http://127.0.0.1:" in text and len(tokens) == 3, text
    assert leaked == [], leaked
    summaries = [ln for ln in lines if ln.strip().startswith("t=")]
    assert summaries, text
    last = summaries[-1]
    assert int(re.search(r"messages in (\d+)", last).group(1)) > 0, last  # type: ignore[union-attr]
    assert int(re.search(r"fire events open (\d+)", last).group(1)) >= 1, last  # type: ignore[union-attr]
    assert "stopped cleanly" in text
    for name in ("gateway.yaml", "tokens.txt", "firegw.db"):
        mode = stat.S_IMODE((work / name).stat().st_mode)
        assert mode & 0o077 == 0, f"{name} is {oct(mode)}"

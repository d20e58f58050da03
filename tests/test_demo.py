"""`make demo`, as a new operator runs it: the production way (deployments served, runs
through them), a clean end within seconds of its last line, nothing on stderr; and `--keep`
printing commands that work as printed, and `--stop` stopping everything it left."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from infra.localcluster import free_port
from infra.ports import REGISTRY_ENV


def _demo(root: Path, *args: str, port: int = 0) -> tuple[int, list[tuple[float, str]], str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PREFECT_", "JACO_")) or k == REGISTRY_ENV  # ports: one registry
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "infra.demo", "--root", str(root),
         "--ui-port", str(port or free_port()), *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    assert process.stdout is not None and process.stderr is not None
    lines = [(time.monotonic(), line.rstrip("\n")) for line in process.stdout]
    code = process.wait(600)
    lines.append((time.monotonic(), "<exit>"))
    return code, lines, process.stderr.read()


def test_the_demo_runs_the_deployments_and_ends_cleanly(tmp_path: Path) -> None:
    port = free_port()
    code, lines, stderr = _demo(tmp_path / "demo", port=port)
    text = "\n".join(line for _, line in lines)
    assert code == 0, text[-3000:]
    assert stderr == "", stderr[-3000:]
    assert "Serving 5 deployments: backup-cluster/backup-demo" in text
    assert "backup-cluster/backup-demo: Completed" in text
    assert "drill-restore/drill-demo: Completed" in text
    assert re.search(r"Restore drill of demo: PASSED in a (docker|bwrap) sandbox", text)
    assert "Deployments — backup-demo" in text
    summary = text[text.index("Restore drill of demo") :]
    assert "With --keep" in summary
    assert "127.0.0.1:" not in summary, "an address printed after which the demo stops it"
    last, exited = lines[-2], lines[-1]
    assert last[1].startswith("All done in") and exited[0] - last[0] < 10
    leftovers = subprocess.run(
        ["pgrep", "-f", str(tmp_path / "demo")], capture_output=True, text=True
    ).stdout.split()
    assert leftovers == [], "the demo left processes running"
    with socket.socket() as probe:  # the Prefect server's command line names no demo path
        assert probe.connect_ex(("127.0.0.1", port)) != 0, "the Prefect server still answers"


def test_keep_prints_commands_that_work_and_stop_ends_it_all(tmp_path: Path) -> None:
    root = tmp_path / "kept"
    code, lines, stderr = _demo(root, "--keep")
    text = "\n".join(line for _, line in lines)
    assert code == 0 and stderr == "", (text[-2000:], stderr[-2000:])
    pids = json.loads((root / "pids.json").read_text())
    try:
        ui = re.search(r"the Prefect UI\s+at (http://127\.0\.0\.1:\d+)", text)
        assert ui, text[-2000:]
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(ui[1]) as page:
            assert page.status == 200  # the metrics: the curl command below
        commands = [line.strip() for line in text.splitlines() if line.startswith("  ")]
        export = next(c for c in commands if c.startswith("export "))
        for command in [c for c in commands if "/jaco " in c or c.startswith("curl")]:
            done = subprocess.run(
                ["bash", "-c", f"{export}\n{command}"], capture_output=True, text=True, timeout=120
            )
            assert done.returncode == 0 and done.stdout, (command, done.stderr)
    finally:
        stop = subprocess.run(
            [sys.executable, "-m", "infra.demo", "--stop", "--root", str(root)],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    assert stop.returncode == 0, stop.stderr
    assert not [pid for pid in pids.values() if Path(f"/proc/{pid}").exists()]

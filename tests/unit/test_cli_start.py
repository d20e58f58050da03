"""Every `jaco` invocation loads what every command needs and nothing more: a command's own
heavy imports (the archive format and its pydantic models, the node's data dir and etcd
adapter, cryptography, protobuf's JSON, rich's tables and progress bars) wait until that
command runs. Tests and operators run the CLI thousands of times; docs/benchmarks.md has the
figures."""

from __future__ import annotations

import subprocess
import sys

HEAVY = (
    "pydantic",
    "cryptography",
    "isal",
    "prefect",
    "boto3",
    "google.protobuf.json_format",
    "rich.table",
    "rich.progress",
    "jaco.archive",
    "jaco.node",
    "jaco.model.etcd",
    "jaco.model.engine",
    "jaco.client.backup",
)

# The whole command tree built (what `jaco --help` and every command do first), nothing run.
PROBE = """
import sys
import typer
from jaco.cli.main import app
typer.main.get_command(app)
print("\\n".join(sorted(sys.modules)))
"""


def _loaded(probe: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    return done.stdout.split()


def _heavy(modules: list[str]) -> list[str]:
    return [m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY)]


def test_the_cli_starts_without_any_command_s_heavy_imports() -> None:
    loaded = _loaded(PROBE)
    assert "jaco.cli.backup" in loaded and "jaco.client.connection" in loaded  # it did load
    assert _heavy(loaded) == []


def test_the_probe_sees_a_heavy_import() -> None:
    """The check above can fail: a command that has run has loaded its own."""
    loaded = _loaded(PROBE.replace("typer.main.get_command(app)", "import jaco.client.backup"))
    assert {"pydantic", "isal", "jaco.archive.format"} <= set(_heavy(loaded))

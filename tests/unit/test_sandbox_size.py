"""JACO_DRILL_TMPFS: the cap of a drill sandbox's tmpfs, read the same by both drivers."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from flows.errors import PipelineError
from flows.sandbox import BwrapSandbox
from flows.sandbox_limits import tmpfs_bytes


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, 8 << 30), ("8g", 8 << 30), ("512M", 512 << 20), ("64k", 64 << 10), ("4096", 4096)],
)
def test_sizes_are_read_in_bytes(
    value: str | None, expected: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    if value is None:
        monkeypatch.delenv("JACO_DRILL_TMPFS", raising=False)
    else:
        monkeypatch.setenv("JACO_DRILL_TMPFS", value)
    assert tmpfs_bytes() == expected


@pytest.mark.parametrize("value", ["8 gb", "0", "-1", "8t", "1.5g", "g", ""])
def test_what_is_not_a_size_is_refused_in_one_line(
    value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JACO_DRILL_TMPFS", value)
    with pytest.raises(PipelineError) as raised:
        tmpfs_bytes()
    assert str(raised.value) == (
        f"JACO_DRILL_TMPFS={value.strip().lower()!r}: not a size (bytes, or a number with k, m "
        "or g)"
    )


def test_the_bwrap_sandbox_caps_both_of_its_tmpfs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JACO_DRILL_TMPFS", "3m")
    cmd = BwrapSandbox().command([])
    mounts = [cmd[i + 1] for i, arg in enumerate(cmd) if arg == "--tmpfs"]
    sized = [cmd[i + 3] for i, arg in enumerate(cmd) if arg == "--size"]
    assert mounts == ["/tmp", "/var/lib/jaco"] and sized == mounts
    assert [cmd[i + 1] for i, arg in enumerate(cmd) if arg == "--size"] == [str(3 << 20)] * 2


def _refusal(found: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The one line a sandbox is refused with when `found` is the bwrap on PATH."""
    monkeypatch.setenv("PATH", f"{found.parent}:{os.environ['PATH']}")
    with pytest.raises(PipelineError) as raised:
        BwrapSandbox()
    return str(raised.value)


def test_a_bwrap_that_cannot_cap_its_tmpfs_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ubuntu 22.04's bubblewrap (0.6) has no --size: a drill there would run uncapped."""
    old = tmp_path / "bwrap"
    old.write_text("#!/bin/sh\necho 'usage: bwrap [OPTIONS...] [--] COMMAND [ARGS...]'\n")
    old.chmod(0o755)
    assert _refusal(old, monkeypatch) == (
        f"{old} cannot cap a tmpfs (no --size: bubblewrap 0.7 or later has it): install one "
        "that can, or use the docker driver"
    )


def test_a_setuid_bwrap_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real bwrap, made setuid as hardened hosts install it: it refuses --size there."""
    real = shutil.which("bwrap")
    assert real is not None
    setuid = tmp_path / "bwrap"
    shutil.copy(real, setuid)
    setuid.chmod(0o4755)
    assert _refusal(setuid, monkeypatch) == (
        f"{setuid} is setuid, and a setuid bwrap may not cap a tmpfs (--size): install one that "
        "can, or use the docker driver"
    )
    setuid.chmod(0o755)  # the same binary, not setuid, is taken
    assert BwrapSandbox().driver == "bwrap"

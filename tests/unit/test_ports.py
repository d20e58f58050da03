"""The port registry shared by processes started side by side (the suite's workers)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from infra import ports


def _claimed_elsewhere(registry: Path, port: int) -> str:
    """Claim `port` in another process using `registry`; what that process says."""
    code = f"from infra.ports import claim; print(claim({port}))"
    env = {ports.REGISTRY_ENV: str(registry), "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True,
        cwd=Path(ports.__file__).parent.parent,
    )  # fmt: skip
    return done.stdout.strip()


def test_a_port_another_process_holds_is_not_handed_out_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ports.REGISTRY_ENV, str(tmp_path))
    port = 1  # never one the kernel hands out: this test's own
    assert _claimed_elsewhere(tmp_path, port) == "True"
    assert ports.claim(port) is False  # the other process has it
    assert _claimed_elsewhere(tmp_path, port) == "False"
    assert [p.name for p in tmp_path.iterdir()] == ["1"]


def test_free_ports_skip_those_claimed_and_claim_their_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ports.REGISTRY_ENV, str(tmp_path))
    handed = [ports.free_port() for _ in range(5)]
    assert len(set(handed)) == 5
    assert sorted(int(p.name) for p in tmp_path.iterdir()) == sorted(handed)
    assert all(_claimed_elsewhere(tmp_path, p) == "False" for p in handed)


def test_ports_come_from_outside_the_kernel_s_own_range() -> None:
    """The kernel hands out its ephemeral range by itself (bind(0), a connection's local end):
    a port of ours awaiting its service must not be one of those."""
    low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    handed = [ports.free_port() for _ in range(20)]
    handed += [p for _ in range(5) for p in ports.free_port_pair(10000)]
    assert all(not low <= p <= high for p in handed), (low, high, handed)

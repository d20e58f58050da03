"""JACO_DRILL_TMPFS: the cap of a drill sandbox's tmpfs, read the same by both drivers."""

from __future__ import annotations

import pytest

from flows.errors import PipelineError
from flows.sandbox import BwrapSandbox, tmpfs_bytes


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

"""Real keys made by their own tools, for the tests: an age identity (`age-keygen`) and an
ssh-ed25519 one (`ssh-keygen`, installed by `make deps`)."""

from __future__ import annotations

import subprocess
from pathlib import Path


def age_keygen(path: Path) -> str:
    """A real age identity file; returns its recipient (public key)."""
    subprocess.run(["age-keygen", "-o", str(path)], check=True, capture_output=True)
    for line in path.read_text().splitlines():
        if line.startswith("# public key: "):
            return line.split(": ", 1)[1]
    raise AssertionError("age-keygen wrote no public key")


def ssh_keygen(path: Path) -> str:
    """A real ssh-ed25519 key without passphrase at `path`; returns its public line, an age
    recipient."""
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)],
        check=True,
        capture_output=True,
    )
    return path.with_name(path.name + ".pub").read_text().strip()

"""Helpers shared by the flow tests: real age keys and the flow's parameters."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from flows.params import BackupParams
from flows.retention import RetentionPolicy
from infra.localcluster import Cluster

BUCKET = "backups"


def age_keygen(path: Path) -> str:
    """A real age identity file; returns its recipient (public key)."""
    subprocess.run(["age-keygen", "-o", str(path)], check=True, capture_output=True)
    for line in path.read_text().splitlines():
        if line.startswith("# public key: "):
            return line.split(": ", 1)[1]
    raise AssertionError("age-keygen wrote no public key")


def params(source: Cluster, keys: dict[str, Any], local: Path, **over: Any) -> BackupParams:
    values: dict[str, Any] = {
        "cluster": "prod",
        "servers": [n.server for n in source.nodes.values()],
        "bucket": BUCKET,
        "prefix": "jaco",
        "recipients": [keys["recipient"]],
        "local_dir": str(local),
        "retention": RetentionPolicy(keep_last=30),
    }
    values.update(over)
    return BackupParams(**values)

"""A process that runs a flow leaves what it imported out of garbage collections (flows/tasks.py:
`gc.freeze()`): Prefect's heap, scanned again by every full collection, made an S3 client cost
twice as much (docs/benchmarks.md, "Upload against boto3")."""

from __future__ import annotations

import subprocess
import sys

FROZEN = """
import gc
before = gc.get_freeze_count()
import prefect
prefects = len(gc.get_objects())  # what Prefect's import left to the collector
import flows.tasks
print(before, prefects, gc.get_freeze_count())
"""


def test_importing_the_flows_tasks_freezes_what_was_imported() -> None:
    done = subprocess.run(
        [sys.executable, "-c", FROZEN], capture_output=True, text=True, check=True, timeout=120
    )
    before, prefects, after = map(int, done.stdout.split())
    assert before == 0
    assert after > prefects, (prefects, after)  # Prefect's heap is among what was frozen

"""The pipeline's encrypt stage beside the `age` CLI and `cp`, round by round:

    python -m bench.encrypt [--mib 512] [--repeat 4] [--before TREE]

One file of random bytes (a backup of random records is as incompressible; jaco's small
records gzip to random-looking bytes too) is encrypted, each round and in an order that turns
round by round, by each tree's encrypt stage (bench.stage's `encrypt`: the flow's encrypt task
in a process of its own, both SHA-256 included), by `age -r KEY -o OUT FILE` and copied by
`cp`, every output a new file as in `make bench`, every side reading the archive from disk
(its pages dropped from memory first, then bench.run's SETTLE seconds, so that no side
writes into pages the one before it just freed), as the pipeline's encrypt task finds it. The goal
(docs/benchmarks.md): the stage ≤ 1.5× age. A TREE is a worktree of another commit with
jaco/_native*.so copied in. Results:
bench/results/encrypt-<time>.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.node_ready import HERE, trees_of
from bench.run import measure, save_results, settled, stage, turning

GOAL = 1.5


def run(before: list[Path], mib: int, repeat: int) -> dict[str, list[dict[str, Any]]]:
    with tempfile.TemporaryDirectory(prefix="jaco-bench-encrypt-", dir="/var/tmp") as tmp:
        work = Path(tmp)
        subprocess.run(["age-keygen", "-o", str(work / "key")], check=True, capture_output=True)
        recipient = subprocess.run(
            ["age-keygen", "-y", str(work / "key")], check=True, capture_output=True, text=True
        ).stdout.strip()
        archive = work / "cluster.tar.gz"
        with open(archive, "wb") as f:
            for _ in range(mib):
                f.write(os.urandom(1024 * 1024))
            f.flush()
            os.fsync(f.fileno())

        def uncached(output: Path) -> None:
            """Each side finds the archive on disk, not in memory, as the pipeline's encrypt
            task finds it: `jaco backup` leaves no page of it cached (jaco.files.WriteBehind).
            Then the pages just freed (these, the last output's) go cold."""
            with open(archive, "rb") as f:
                os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
            settled(output)

        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}

        def tree_side(tree: Path) -> Callable[[], dict[str, Any]]:
            def side() -> dict[str, Any]:
                uncached(work / "cluster.tar.gz.age")
                args = {"archive": str(archive), "recipients": [recipient]}
                got = stage("encrypt", args, env, work, tree=None if tree == HERE else tree)
                return {"seconds": got["seconds"], "cpu": got["cpu_seconds"]}

            return side

        def command(cmd: list[str], out: Path) -> Callable[[], dict[str, Any]]:
            def side() -> dict[str, Any]:
                uncached(out)
                got = measure(cmd)
                return {"seconds": got["seconds"], "cpu": got["cpu_seconds"]}

            return side

        trees = trees_of(before)
        sides = {f"jaco {label}": tree_side(tree) for label, tree in trees.items()}
        sides["age"] = command(["age", "-r", recipient, "-o", str(work / "age.out"), str(archive)],
                               work / "age.out")  # fmt: skip
        sides["cp"] = command(["cp", str(archive), str(work / "copy.out")], work / "copy.out")
        runs: dict[str, list[dict[str, Any]]] = {label: [] for label in sides}
        for round_, label in turning(list(sides), repeat):
            got = sides[label]()
            runs[label].append(got)
            print(f"round {round_ + 1} {label}: {got['seconds']:.3f} s, "
                  f"CPU {got['cpu']:.3f} s", flush=True)  # fmt: skip
        return runs


def summary(runs: dict[str, list[dict[str, Any]]]) -> list[str]:
    age = statistics.median(r["seconds"] for r in runs["age"])
    lines = []
    for label, rows in runs.items():
        seconds = [r["seconds"] for r in rows]
        median = statistics.median(seconds)
        cpu = [r["cpu"] for r in rows]
        rounds = ", ".join(f"{s:.3f}" for s in seconds)
        line = f"{label}: {rounds} s; median {median:.3f} s, CPU {min(cpu):.2f}–{max(cpu):.2f} s"
        if label.startswith("jaco"):
            verdict = "met" if median <= GOAL * age else "MISSED"
            line += f"; {median / age:.2f}× age [{verdict}: ≤ {GOAL}×]"
        lines.append(line)
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, action="append", default=[])
    parser.add_argument("--mib", type=int, default=512, help="the file's size")
    parser.add_argument("--repeat", type=int, default=4)
    args = parser.parse_args(argv)
    started = dt.datetime.now(dt.UTC)
    runs = run(args.before, args.mib, args.repeat)
    lines = summary(runs)
    print("\n".join(["", *lines]))
    save_results("encrypt", started, "result", {"mib": args.mib, "runs": runs, "summary": lines})
    return 0


if __name__ == "__main__":
    sys.exit(main())

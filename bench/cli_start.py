"""The `jaco` CLI's own cost, this tree beside another one, against one real node.

    git worktree add --detach /tmp/jaco-before REV
    cp jaco/_native*.so /tmp/jaco-before/jaco/     # the compiled pass is a build product
    python -m bench.cli_start --before /tmp/jaco-before [--repeat 9]

Each command (`jaco --version`, `jaco deploy`, `jaco backup` of a node holding a few KiB) runs
through this venv's Python with PYTHONPATH set to one tree or the other, alternating run by
run so that the machine's load falls on both alike; medians, and the range. The node serves
both from this tree. Results go to bench/results/cli-start-<time>.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import tempfile
from pathlib import Path

from bench.run import RESULTS, measure
from infra.localcluster import cluster_of

HERE = Path(__file__).resolve().parents[1]
# `jaco` itself, with the tree chosen by PYTHONPATH (the console script would import this one)
ENTRY = "import sys; from jaco.cli.main import main; sys.argv = ['jaco', *sys.argv[1:]]; main()"


def run(before: Path, repeat: int) -> dict[str, dict[str, list[float]]]:
    trees = {"before": before.resolve(), "after": HERE}
    with tempfile.TemporaryDirectory(prefix="jaco-cli-start-") as tmp:
        root = Path(tmp)
        with cluster_of(root / "c", 1) as cluster:
            node = cluster.nodes["node-1"]
            env = {"JACO_TOKEN": cluster.token, "JACO_SERVER": node.server}
            cases = {
                "jaco --version": lambda n: ["--version"],
                "jaco deploy": lambda n: ["deploy", f"w{n}", "--image", "nginx:1"],
                "jaco backup (a few KiB)": lambda n: ["backup", "-o", str(root / f"{n}.tar.gz")],
            }
            runs: dict[str, dict[str, list[float]]] = {c: {t: [] for t in trees} for c in cases}
            n = 0
            for _ in range(repeat):
                for case, args in cases.items():
                    for label, tree in trees.items():
                        n += 1
                        # -P: not the current directory first on sys.path, the tree chosen
                        cmd = [sys.executable, "-P", "-c", ENTRY, *args(n)]
                        result = measure(cmd, {**env, "PYTHONPATH": str(tree)})
                        runs[case][label].append(result["seconds"])
            return runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, required=True, help="the other tree")
    parser.add_argument("--repeat", type=int, default=9)
    args = parser.parse_args(argv)
    runs = run(args.before, args.repeat)
    print("| command | before | after |")
    print("|---|---|---|")
    for case, by in runs.items():
        shown = [f"{statistics.median(r):.2f} s ({min(r):.2f}–{max(r):.2f})" for r in by.values()]
        print(f"| {case} | {' | '.join(shown)} |")
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    out = RESULTS / f"cli-start-{stamp}.json"
    out.write_text(json.dumps({"before": str(args.before), "runs": runs}, indent=1) + "\n")
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

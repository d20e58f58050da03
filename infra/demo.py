"""`make demo`: a local 3-node cluster with sample state, shown through the CLI.

Everything listens on 127.0.0.1 (free ports) under .demo/. Pass --keep to leave the cluster
running afterwards (the script prints how to use and stop it).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from infra.localcluster import JACO, Cluster, cluster_of

ROOT = Path(".demo")


def show(cluster: Cluster, *args: str) -> None:
    print(f"\n$ jaco {' '.join(args)}", flush=True)
    result = cluster.ok(*args)
    print(result.out, end="", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keep", action="store_true", help="leave the cluster running")
    args = parser.parse_args()
    if ROOT.exists():
        shutil.rmtree(ROOT)
    ROOT.mkdir()
    print("Starting a 3-node jaco cluster on 127.0.0.1 (init + 2 joins)...", flush=True)
    with cluster_of(ROOT.resolve(), 3) as cluster:
        show(cluster, "deploy", "web", "--image", "nginx:1.27", "--replicas", "3")
        show(
            cluster,
            "deploy",
            "api",
            "--image",
            "ghcr.io/example/api:2.4",
            "--replicas",
            "2",
            "--env",
            "LOG_LEVEL=info",
        )
        show(cluster, "route", "add", "web", "--host", "www.example.com", "--deployment", "web")
        show(cluster, "cluster", "status")
        show(cluster, "status")
        show(cluster, "audit")
        show(cluster, "audit", "verify")
        if args.keep:
            token_file = ROOT / "admin.token"
            token_file.write_text(cluster.token + "\n")
            token_file.chmod(0o600)
            print(
                f"\nThe cluster keeps running. Try:\n  export JACO_TOKEN=$(cat {token_file})"
                f"\n  export JACO_SERVER={cluster.nodes['node-1'].server}\n  {JACO} status"
            )
            pids = [str(n.process.pid) for n in cluster.nodes.values() if n.process]
            print(f"Stop it with: kill {' '.join(pids)}")
            for node in cluster.nodes.values():
                node.process = None  # detach: the context exit must not stop them


if __name__ == "__main__":
    main()

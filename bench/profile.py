"""Where the time goes: py-spy profiles of the jaco stages on a cluster of one size.

    python -m bench.profile --size 512                # random 48 KiB records
    python -m bench.profile --size 512 --value-kib 0  # realistic small records

Builds the same cluster as bench.run, then samples (py-spy, wall clock incl. idle threads):
jacod while it serves a `jaco backup`, the `jaco backup` client, `jaco restore`, and the
encrypt and verify tasks. Prints, per profile, the functions with the largest share of the
samples (inclusive). Raw collapsed stacks are kept in bench/results/profile-<size>-*.txt.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.run import BIN, BUCKET, PY, RESULTS, build, free_port
from infra import prefect_server
from infra.seaweed import SeaweedS3

PYSPY = str(BIN / "py-spy")


def top(raw: Path, n: int = 18) -> list[str]:
    """Inclusive share of samples per function from py-spy's collapsed stacks."""
    total = 0
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        samples = int(count)
        total += samples
        frames = [f.split(" (")[0] + " (" + f.split(" (")[-1] for f in stack.split(";")]
        frames = [f.split(":")[0] + ")" if f.endswith(")") else f for f in frames]
        for frame in set(frames[1:]):
            inclusive[frame] += samples
        own[frames[-1]] += samples
    lines = [f"  {raw.name}: {total} samples"]
    for frame, samples in inclusive.most_common(n):
        lines.append(
            f"   {samples / total * 100:5.1f}% incl {own[frame] / total * 100:5.1f}% self  {frame}"
        )
    return lines


def record(out: Path, target: list[str], env: dict[str, str]) -> None:
    subprocess.run(
        [PYSPY, "record", "--idle", "-r", "200", "--format", "raw", "-o", str(out), "--", *target],
        env={**os.environ, **env},
        check=True,
        capture_output=True,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument(
        "--value-kib", type=int, default=48, help="bulk record size; 0: realistic small records"
    )
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="jaco-profile-", dir="/var/tmp"))
    RESULTS.mkdir(exist_ok=True)
    prefix = RESULTS / f"profile-{args.size}"
    s3 = SeaweedS3(root / "s3")
    prefect = None
    cluster = None
    report: list[str] = []
    try:
        s3.start()
        s3.create_bucket(BUCKET)
        prefect = prefect_server.start(root / "prefect")
        url = prefect.url
        cluster, built = build(root / "c", args.size, args.value_kib)
        node = cluster.nodes["node-1"]
        key_file = root / "age.key"
        subprocess.run(["age-keygen", "-o", str(key_file)], check=True, capture_output=True)
        recipient = next(
            line.split(": ", 1)[1] for line in key_file.read_text().splitlines() if "public" in line
        )
        env = {
            "JACO_TOKEN": cluster.token,
            "JACO_SERVER": node.server,
            "JACO_AGE_IDENTITY_FILE": str(key_file),
            **s3.env(),
            "PREFECT_API_URL": url,
            "PREFECT_HOME": str(root / "prefect"),
        }
        work = root / "work"
        work.mkdir()
        archive = work / "cluster.tar.gz"
        assert node.process is not None
        server_out = Path(f"{prefix}-jacod-backup.txt")
        spy = subprocess.Popen(
            [PYSPY, "record", "--idle", "-r", "200", "--format", "raw", "-o", str(server_out)]
            + ["--pid", str(node.process.pid)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(1.5)
        client_out = Path(f"{prefix}-client-backup.txt")
        started = time.monotonic()
        record(client_out, [PY, "-m", "jaco.cli", "backup", "--output", str(archive)], env)
        report.append(f"jaco backup {time.monotonic() - started:.2f}s ({built})")
        time.sleep(0.5)
        spy.send_signal(signal.SIGINT)
        spy.wait(60)
        report += top(server_out) + top(client_out)

        enc_out = Path(f"{prefix}-encrypt.txt")
        enc_result = root / "enc.json"
        record(
            enc_out,
            [PY, "-m", "bench.stage", "encrypt"]
            + [json.dumps({"archive": str(archive), "recipients": [recipient]}), str(enc_result)],
            env,
        )
        enc: dict[str, Any] = json.loads(enc_result.read_text())
        report += top(enc_out)
        key = "profile/cluster.tar.gz.age"
        metadata = {
            "plaintext-sha256": enc["plaintext_sha256"],
            "ciphertext-sha256": enc["ciphertext_sha256"],
        }
        up_args = {"store": f"s3://{BUCKET}", "path": enc["path"], "key": key}
        up_out = Path(f"{prefix}-upload.txt")
        record(
            up_out,
            [PY, "-m", "bench.stage", "upload", json.dumps({**up_args, "metadata": metadata})]
            + [str(root / "up.json")],
            env,
        )
        report += top(up_out)
        meta = json.loads(
            subprocess.run(
                [str(BIN / "jaco"), "backup", "inspect", str(archive), "--json"],
                capture_output=True,
                check=True,
            ).stdout
        )
        expected = {**enc, "meta": meta}
        ver_out = Path(f"{prefix}-verify.txt")
        record(
            ver_out,
            [PY, "-m", "bench.stage", "verify"]
            + [
                json.dumps(
                    {
                        "store": f"s3://{BUCKET}",
                        "key": key,
                        "expected": expected,
                        "workdir": str(work),
                    }
                )
            ]
            + [str(root / "ver.json")],
            env,
        )
        report += top(ver_out)
        res_out = Path(f"{prefix}-restore.txt")
        record(
            res_out,
            [PY, "-m", "jaco.cli", "restore", "--input", str(archive), "--name", "r"]
            + ["--data-dir", str(root / "restored"), "--advertise-host", "127.0.0.1"]
            + ["--api-port", str(free_port()), "--etcd-client-port", str(free_port())]
            + ["--etcd-peer-port", str(free_port())],
            env,
        )
        report += top(res_out)
    finally:
        if cluster is not None:
            cluster.stop_all()
        if prefect is not None:
            prefect.stop()
        s3.stop()
        shutil.rmtree(root, ignore_errors=True)
    print("\n".join(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""One measured stage in its own process, so that its peak RSS is its own.

`python -m bench.stage NAME JSON_ARGS RESULT_FILE` runs one stage in this process, times the
call itself (imports excluded) and writes `{"seconds", "rss_kib", ...}` to RESULT_FILE.
`python -m bench.stage cli RESULT_FILE -- ARGS...` runs the `jaco` CLI in-process (startup and
imports included, like a user's shell would see) and reports this process's own peak RSS, not
that of the children it starts (etcd, etcdctl).
"""

from __future__ import annotations

import dataclasses
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any


def _rss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _encrypt(args: dict[str, Any]) -> dict[str, Any]:
    from flows.tasks import encrypt_task

    done = encrypt_task.fn(Path(args["archive"]), args["recipients"])
    return {**dataclasses.asdict(done), "path": str(done.path)}


def _upload(args: dict[str, Any]) -> dict[str, Any]:
    from flows.secrets import S3Settings
    from flows.tasks import upload_task

    path, s3 = Path(args["path"]), S3Settings()  # the AWS_* environment bench.run sets
    return {"seconds": upload_task.fn(args["store"], s3, path, args["key"], args["metadata"])}


def _verify(args: dict[str, Any]) -> dict[str, Any]:
    from flows.params import Where
    from flows.tasks import Encrypted, verify_task
    from jaco.public import BackupMeta

    expected = args["expected"]
    meta = BackupMeta.model_validate(expected["meta"], strict=False)
    encrypted = Encrypted(
        Path(),
        expected["plaintext_sha256"],
        expected["ciphertext_sha256"],
        expected["ciphertext_size"],
        0.0,
    )
    # Secrets and S3 settings by default: JACO_TOKEN, JACO_AGE_IDENTITY_FILE, AWS_* (bench.run).
    where = Where(cluster="bench", bucket=args["store"].removeprefix("s3://"))
    seconds = verify_task.fn(where, args["key"], meta, encrypted)
    return {"download_seconds": seconds}


def _boto3_upload(args: dict[str, Any]) -> dict[str, Any]:
    import boto3

    boto3.client("s3").upload_file(args["path"], args["bucket"], args["key"])
    return {}


def _boto3_download(args: dict[str, Any]) -> dict[str, Any]:
    import boto3

    boto3.client("s3").download_file(args["bucket"], args["key"], args["path"])
    return {}


def _flow(args: dict[str, Any]) -> dict[str, Any]:
    from flows.backup_flow import backup_cluster
    from flows.params import BackupParams

    result = backup_cluster(BackupParams(**args["params"]))
    return {"stages": result["stages"], "size": result["size"], "key": result["key"]}


def _drill(args: dict[str, Any]) -> dict[str, Any]:
    from flows.drill_flow import drill_restore
    from flows.params import DrillParams

    result = drill_restore(DrillParams(**args["params"]))
    return {
        "rto_seconds": result["rto_seconds"],
        "checks": len(result["checks"]),
        "check_seconds": {c["name"]: c["seconds"] for c in result["checks"]},
        "sandbox_cpu_seconds": result["timings"].get("cpu_seconds"),
    }


STAGES = {
    "encrypt": _encrypt,
    "upload": _upload,
    "verify": _verify,
    "boto3-upload": _boto3_upload,
    "boto3-download": _boto3_download,
    "flow": _flow,
    "drill": _drill,
}


def _cli(result_file: Path, argv: list[str]) -> int:
    from jaco.cli.main import main

    sys.argv = ["jaco", *argv]
    code: Any = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code or 0
    result_file.write_text(json.dumps({"rss_kib": _rss_kib(), "code": code}))
    return code if isinstance(code, int) else 1


def _debug_loggers() -> None:
    """BENCH_DEBUG_LOGGERS=a,b: those loggers at DEBUG (bench.flow_end reads them), set after
    Prefect's own logging setup, which would reset them. Their lines reach stderr through
    Prefect's console handler on the root logger (a handler of our own would print each
    twice)."""
    import logging
    import os

    names = [n for n in os.environ.get("BENCH_DEBUG_LOGGERS", "").split(",") if n]
    if names:
        import prefect.main  # noqa: F401 - Prefect configures logging on import

        for name in names:
            logging.getLogger(name).setLevel(logging.DEBUG)


def run() -> int:
    if sys.argv[1] == "cli":
        return _cli(Path(sys.argv[2]), sys.argv[4:] if sys.argv[3] == "--" else sys.argv[3:])
    name, args, result_file = sys.argv[1], json.loads(sys.argv[2]), Path(sys.argv[3])
    fn = STAGES[name]
    # Imports happen before the clock starts: the stage, not the interpreter, is measured.
    if name in ("encrypt", "upload", "verify"):
        import logging

        import boto3.s3.transfer  # noqa: F401 - flows.storage imports it as a store opens

        import flows.tasks

        # Called outside a flow run (`task.fn`): Prefect's run logger has no context there.
        flows.tasks.get_run_logger = lambda: logging.getLogger("bench")  # type: ignore[assignment]
    if name in ("flow", "drill"):
        import flows.backup_flow  # noqa: F401
        import flows.drill_flow  # noqa: F401
    if name.startswith("boto3"):
        import boto3.s3.transfer  # noqa: F401 - as for jaco's stages: both clocks start after
    _debug_loggers()
    started = time.monotonic()
    extra = fn(args)
    seconds = time.monotonic() - started
    extra = {("task_seconds" if k == "seconds" else k): v for k, v in extra.items()}
    result_file.write_text(json.dumps({**extra, "seconds": seconds, "rss_kib": _rss_kib()}))
    return 0


if __name__ == "__main__":
    sys.exit(run())

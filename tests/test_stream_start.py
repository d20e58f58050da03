"""`jaco pipeline stream` whose first full backup fails: it waits and tries again, longer each
time, instead of exiting (under systemd's Restart=always, an exit meant a failed backup run and
its alert every few seconds). A real cluster, SeaweedFS, Prefect server, and the stream as a
real process."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

import pytest

from flows.catalog import Catalog
from flows.storage import open_store
from infra.localcluster import JACO, Cluster, wait_for
from infra.seaweed import running_seaweed
from tests.pipeline import BUCKET, Webhook, age_keygen

WAITS = re.compile(r"the full backup of lonely failed: .*; the next attempt in (\d+)s")


def test_a_failing_full_backup_is_retried_with_backoff_not_by_exiting(
    cluster3: Cluster, prefect: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stream on a cluster with no backup yet, given a token the cluster refuses: each
    attempt fails once, alerts once, and the wait before the next one doubles (1 s, 2 s, 4 s).
    The process stays up. Once the token file is mended, the next attempt takes the base
    backup and the stream reports from it; SIGTERM then ends it with status 0. No attempt
    leaves an object behind, and the token is in no log or alert."""
    recipient = age_keygen(tmp_path / "ops.key")
    token = tmp_path / "token"
    forged = cluster3.token[: cluster3.token.rindex(".") + 1] + "C" * 43
    token.write_text(forged)
    servers = ", ".join(f'"{n.server}"' for n in cluster3.nodes.values())
    config = tmp_path / "clusters.toml"
    hook = Webhook()
    config.write_text(
        f"""[clusters.lonely]
servers = [{servers}]
bucket = "{BUCKET}"
prefix = "jaco"
recipients = ["{recipient}"]
local_dir = "{tmp_path / "local"}"
[clusters.lonely.secrets]
token = "file:{token}"
verify_identity = "file:{tmp_path / "ops.key"}"
alert_webhook = "env:LONELY_HOOK"
"""
    )
    log_path = tmp_path / "stream.log"
    with running_seaweed(tmp_path / "s3") as s3, open(log_path, "wb") as log:
        s3.create_bucket(BUCKET)
        for name, value in s3.env().items():
            monkeypatch.setenv(name, value)
        catalog = Catalog(open_store(f"s3://{BUCKET}"), "jaco", "lonely")
        process = subprocess.Popen(
            [JACO, "pipeline", "stream", "--config", str(config), "--cluster", "lonely"]
            + ["--heartbeat-seconds", "1", "--full-backup-retry-seconds", "1"],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "PREFECT_API_URL": prefect, "LONELY_HOOK": hook.url},
        )
        try:
            wait_for(
                lambda: len(WAITS.findall(log_path.read_text())) >= 3 or process.poll() is not None,
                180,
                "three failed full backups",
            )
            text = log_path.read_text()
            assert process.poll() is None, text[-3000:]
            assert WAITS.findall(text)[:3] == ["1", "2", "4"], text[-3000:]
            assert "not valid for this cluster" in text, text[-3000:]
            failed = len(WAITS.findall(text))
            alerts = hook.events("lonely")
            assert set(alerts) == {"jaco.backup.failed"}, alerts
            assert failed <= len(alerts) <= failed + 1, (failed, alerts)  # +1: one under way
            listing = s3.client().list_objects_v2(Bucket=BUCKET, Prefix="jaco/")
            keys = [o["Key"] for o in listing.get("Contents", [])]
            assert not [k for k in keys if not k.startswith("jaco/catalog/")], keys

            token.write_text(cluster3.token)  # mended: the next attempt takes the base
            wait_for(lambda: catalog.stream_status() is not None, 180, "the stream's heartbeat")
            [base] = catalog.backups()
            assert base.verified is not None
            status = catalog.stream_status()
            assert status is not None and status.base == base.stem
            assert status.pid == process.pid
        finally:
            process.send_signal(signal.SIGTERM)
            code = process.wait(60)
            hook.close()
    text = log_path.read_text()
    assert code == 0, text[-3000:]
    assert forged.split(".")[-1] not in text + str(hook.posts)
    assert cluster3.token.split(".")[-1] not in text + str(hook.posts)

"""`jaco backup describe`: a full key names one backup; a bare file name two clusters share is
refused, not answered with whichever cluster the store listed first.

Two clusters' backups share a file name whenever they were taken on the same day at the same
revision (the name is `cluster-<date>-<revision>`): the fleet test met it at revision 41.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from flows.catalog import BackupRecord, Catalog
from flows.storage import open_store
from infra.localcluster import JACO, run

NAME = "cluster-2026-12-04-41.tar.gz.age"
IDS = {"alpha": "75926281dc03480f", "beta": "ce4425fb13604d15"}


def _record(cluster: str, name: str = NAME) -> BackupRecord:
    return BackupRecord(
        cluster=cluster,
        cluster_id=IDS[cluster],
        key=f"jaco/{IDS[cluster]}/2026/12/04/{name}",
        taken_at=dt.datetime(2026, 12, 4, 3, 20, tzinfo=dt.UTC),
        snapshot_index=41,
        snapshot_term=2,
        jaco_version="test",
        archive_size=1,
        size=1,
        plaintext_sha256="0" * 64,
        ciphertext_sha256="1" * 64,
        snapshot_sha256="2" * 64,
        state_digest="3" * 64,
        counts={},
    )


@pytest.fixture
def store(tmp_path: Path) -> Path:
    opened = open_store(f"file://{tmp_path}")
    for cluster in IDS:  # alpha is listed first: the one a first match by name would answer
        Catalog(opened, "jaco", cluster).record_backup(_record(cluster))
    Catalog(opened, "jaco", "beta").record_backup(_record("beta", "cluster-2026-12-04-7.tar.gz"))
    return tmp_path


@pytest.mark.parametrize("cluster", list(IDS))
def test_a_full_key_describes_that_backup_and_no_other(store: Path, cluster: str) -> None:
    key = _record(cluster).key
    shown = run([JACO, "backup", "describe", key, "--store", str(store), "--json"])
    assert shown.code == 0, shown.err
    assert f'"cluster_id": "{IDS[cluster]}"' in shown.out and f'"key": "{key}"' in shown.out
    other = next(c for c in IDS if c != cluster)
    assert IDS[other] not in shown.out


def test_a_file_name_two_clusters_share_is_refused_naming_both(store: Path) -> None:
    before = sorted(p.relative_to(store) for p in store.rglob("*"))
    refused = run([JACO, "backup", "describe", NAME, "--store", str(store)])
    assert refused.code == 2 and refused.out == ""
    assert refused.err == (
        f"error: {NAME} names backups of 2 clusters (alpha, beta): say which with --cluster, or "
        "give the full key (`jaco backup ls --json` shows it)\n"
    )
    assert sorted(p.relative_to(store) for p in store.rglob("*")) == before
    chosen = run([JACO, "backup", "describe", NAME, "-c", "beta", "--store", str(store)])
    assert chosen.code == 0, chosen.err
    assert IDS["beta"] in chosen.out and IDS["alpha"] not in chosen.out


def test_a_file_name_only_one_cluster_has_is_enough(store: Path) -> None:
    shown = run([JACO, "backup", "describe", "cluster-2026-12-04-7.tar.gz", "--store", str(store)])
    assert shown.code == 0, shown.err
    assert IDS["beta"] in shown.out and IDS["alpha"] not in shown.out


def test_a_full_key_is_never_answered_with_another_backup_of_its_name(store: Path) -> None:
    alpha = _record("alpha").key
    for wrong in (
        ["-c", "beta", alpha],  # alpha's key, beta's catalog: beta has a backup of that name
        [alpha.replace(IDS["alpha"], "0000000000000000")],  # a key no backup has
    ):
        refused = run([JACO, "backup", "describe", *wrong, "--store", str(store)])
        assert refused.code == 3 and refused.out == "", refused.err
        assert refused.err.startswith(f"error: no backup {wrong[-1]} in the catalog")
        assert len(refused.err.splitlines()) == 1

"""Retention (GFS) against real S3 and a local directory, with a hand-computed expectation.

Both the scheduled `prune-backups` flow and the task inside `backup-cluster` are exercised."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from prefect import flow

from flows.catalog import Catalog, stem_of
from flows.params import BackupParams, PruneParams
from flows.prune_flow import prune_backups
from flows.reports import backup_report
from flows.retention import RetentionPolicy, parse_key
from flows.storage import open_store
from flows.tasks import prune_task
from infra.seaweed import SeaweedS3, running_seaweed
from tests.archives import a_meta
from tests.pipeline import backup_record

BUCKET = "retention"
PREFIX = "jaco/c1/"
AGE_RECIPIENT = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"  # docs example
POLICY = RetentionPolicy(keep_last=3, daily=7, weekly=4, monthly=6)
# One backup a day from 2026-01-01 to 2026-11-25 (a Wednesday, ISO week 48). By hand:
# last 3: Nov 23-25; daily 7: Nov 19-25; weekly 4: Nov 25 (wk 48), Nov 22 (47), Nov 15 (46),
# Nov 8 (45); monthly 6: Nov 25, Oct 31, Sep 30, Aug 31, Jul 31, Jun 30.
EXPECTED = {
    "2026-11-19",
    "2026-11-20",
    "2026-11-21",
    "2026-11-22",
    "2026-11-23",
    "2026-11-24",
    "2026-11-25",
    "2026-11-15",
    "2026-11-08",
    "2026-10-31",
    "2026-09-30",
    "2026-08-31",
    "2026-07-31",
    "2026-06-30",
}
PROTECTED = "2026-03-03"  # "the newest verified backup" stand-in: never deleted


def where(bucket: str = BUCKET, local: Path | None = None) -> PruneParams:
    return PruneParams(
        cluster="c1", bucket=bucket, local_dir=str(local or "/nonexistent"), retention=POLICY
    )


@flow
def prune(
    store_url: str, policy: RetentionPolicy, protect: str | None, bucket: str = BUCKET
) -> Any:
    """The task as the backup flow runs it (inside a flow run)."""
    return prune_task(where(bucket), store_url, "c1", policy, protect)


def key_of(day: dt.date) -> str:
    return f"{PREFIX}{day:%Y/%m/%d}/cluster-{day.isoformat()}-{day.toordinal()}.tar.gz.age"


def all_days() -> list[dt.date]:
    first, last = dt.date(2026, 1, 1), dt.date(2026, 11, 25)
    return [first + dt.timedelta(days=i) for i in range((last - first).days + 1)]


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    with running_seaweed(tmp_path_factory.mktemp("seaweed")) as server:
        server.create_bucket(BUCKET)
        yield server


def remaining_days(keys: list[str]) -> set[str]:
    parsed = [parse_key(k) for k in keys]
    return {b.day.isoformat() for b in parsed if b is not None}


def test_gfs_on_s3(s3: SeaweedS3, monkeypatch: pytest.MonkeyPatch, prefect: str) -> None:
    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    client = s3.client()
    for day in all_days():
        client.put_object(Bucket=BUCKET, Key=key_of(day), Body=b"x")
    client.put_object(Bucket=BUCKET, Key=f"{PREFIX}notes.txt", Body=b"not a backup")

    dry = prune(
        f"s3://{BUCKET}", POLICY.model_copy(update={"dry_run": True}), key_of(dt.date(2026, 3, 3))
    )
    assert len(dry["deleted"]) == len(all_days()) - len(EXPECTED) - 1
    assert len(client.list_objects_v2(Bucket=BUCKET, Prefix=PREFIX)["Contents"]) == 330

    result = prune(f"s3://{BUCKET}", POLICY, key_of(dt.date(2026, 3, 3)))
    listing = client.list_objects_v2(Bucket=BUCKET, Prefix=PREFIX)["Contents"]
    keys = [o["Key"] for o in listing]
    assert remaining_days(keys) == EXPECTED | {PROTECTED}
    assert f"{PREFIX}notes.txt" in keys  # not a backup: never touched
    assert sorted(result["deleted"]) == sorted(dry["deleted"])


def test_gfs_on_local_directory(tmp_path: Path, prefect: str) -> None:
    for day in all_days():
        path = tmp_path / key_of(day)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    prune(f"file://{tmp_path}", POLICY, key_of(dt.date(2026, 3, 3)))
    keys = [p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.age")]
    assert remaining_days(keys) == EXPECTED | {PROTECTED}


def _stored(root: Path, days: list[dt.date], verified: list[dt.date]) -> Catalog:
    """A backup of each day in a local store at `root`, recorded in its catalog (those of
    `verified` verified); the catalog."""
    catalog = Catalog(open_store(f"file://{root}"), "jaco", "c1")
    for day in days:
        path = root / key_of(day)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
        catalog.record_backup(
            backup_record(key_of(day), day, day.toordinal(), verified=day in verified)
        )
    return catalog


def test_the_newest_verified_backup_outlives_newer_unverified_ones(
    tmp_path: Path, prefect: str
) -> None:
    """A backup whose verify could not finish is kept, unverified: it must not take the last
    slot of the one the catalog proves restorable. keep_last=1, the two newest unverified, run
    as the prune flow runs it (nothing named to protect): the newest verified one stays, the
    older verified one goes. A damaged drill record beside them does not stop it (retention
    reads the backup records only)."""
    days = all_days()[-4:]
    catalog = _stored(tmp_path, days, verified=days[:2])
    drill = tmp_path / "jaco/catalog/c1/drills" / stem_of(key_of(days[2])) / "x.json"
    drill.parent.mkdir(parents=True)
    drill.write_bytes(b"{")  # damaged
    policy = RetentionPolicy(keep_last=1, daily=0, weekly=0, monthly=0)
    result = prune(f"file://{tmp_path}", policy, None)
    assert result["kept"] == sorted([key_of(days[1]), key_of(days[3])])
    assert result["deleted"] == sorted([key_of(days[0]), key_of(days[2])])
    assert not drill.exists()  # its backup forgotten, its drill records went with it
    assert sorted(b.key for b in catalog.backups()) == result["kept"]


def test_the_newest_verified_backup_still_stored_is_kept(tmp_path: Path, prefect: str) -> None:
    """The catalog's newest verified backup is gone from the store (deleted by hand, or by a
    lifecycle rule), its record left: retention keeps the newest verified backup that is still
    there, not a name that protects nothing. keep_last=1, the prune flow's way."""
    days = all_days()[-3:]
    _stored(tmp_path, days, verified=days[:2])
    (tmp_path / key_of(days[1])).unlink()  # the newest verified one, its record kept
    policy = RetentionPolicy(keep_last=1, daily=0, weekly=0, monthly=0)
    result = prune(f"file://{tmp_path}", policy, None)
    assert result["kept"] == sorted([key_of(days[0]), key_of(days[2])])
    assert result["deleted"] == []
    assert (tmp_path / key_of(days[0])).exists()


@pytest.mark.parametrize("way", ["prune flow", "backup flow"])
def test_each_period_keeps_its_newest_verified_backup_not_a_newer_unverified_one(
    tmp_path: Path, prefect: str, way: str
) -> None:
    """Verify could not finish for the newest backup of a week (S3 failing that evening): kept,
    unverified. That week's slot goes to its newest verified backup, not to the unverified one
    (which the newest verified backup of the whole store no longer protects, a week on).
    keep_last=1, weekly=2: Mon 16 – Wed 25 November 2026, ISO weeks 47 and 48, the 22nd (week
    47's last) and the 25th (the newest) unverified. Pruned as the prune flow does it (nothing
    named) and as the backup flow does (the 24th, just verified, named): the same."""
    days = [dt.date(2026, 11, d) for d in range(16, 26)]
    unverified = [dt.date(2026, 11, 22), dt.date(2026, 11, 25)]
    _stored(tmp_path, days, verified=[d for d in days if d not in unverified])
    policy = RetentionPolicy(keep_last=1, daily=0, weekly=2, monthly=0)
    protect = key_of(dt.date(2026, 11, 24)) if way == "backup flow" else None
    result = prune(f"file://{tmp_path}", policy, protect)
    kept = [key_of(dt.date(2026, 11, d)) for d in (21, 24, 25)]
    assert result["kept"] == sorted(kept)
    assert sorted(k for k in (p.relative_to(tmp_path).as_posix() for p in
                  tmp_path.rglob("*.age"))) == sorted(kept)  # fmt: skip
    assert key_of(dt.date(2026, 11, 22)) in result["deleted"]


@pytest.mark.parametrize("way", ["prune flow", "backup flow"])
def test_a_damaged_backup_record_keeps_its_backup_and_does_not_stop_prune(
    tmp_path: Path, prefect: str, way: str
) -> None:
    """One backup record cannot be parsed (edited by hand, cut short): retention cannot tell
    whether that backup was verified, so it keeps it, names the record, and prunes the rest
    as usual. It does not fail: the backup flow's prune stage reads every record, and one bad
    record must not fail every backup run after it."""
    days = all_days()[-5:]
    _stored(tmp_path, days, verified=days)
    damaged = tmp_path / "jaco/catalog/c1/backups" / f"{stem_of(key_of(days[0]))}.json"
    damaged.write_bytes(b'{"cluster": "c1", "key": ')  # cut short
    policy = RetentionPolicy(keep_last=2, daily=0, weekly=0, monthly=0)
    protect = key_of(days[-1]) if way == "backup flow" else None
    result = prune(f"file://{tmp_path}", policy, protect)
    assert result["kept"] == sorted(key_of(d) for d in (days[0], days[3], days[4]))
    assert result["deleted"] == sorted(key_of(d) for d in days[1:3])
    assert result["damaged_records"] == [damaged.relative_to(tmp_path).as_posix()]
    assert (tmp_path / key_of(days[0])).exists() and damaged.exists()
    # where operators look: the backup run's report names it
    params = BackupParams(cluster="c1", servers=["127.0.0.1:1"], bucket=BUCKET,
                          recipients=[AGE_RECIPIENT], local_dir=str(tmp_path))  # fmt: skip
    sizes = SimpleNamespace(size=1, plaintext_sha256="0" * 64, ciphertext_sha256="1" * 64)
    report = backup_report(params, a_meta(), key_of(days[-1]), sizes, [], [result], [])
    assert (
        "Damaged catalog records (their backups kept; mend or remove them):\n- `"
        + (result["damaged_records"][0] + "`")
        in report
    ), report


def test_objects_under_object_lock_are_skipped(
    s3: SeaweedS3, monkeypatch: pytest.MonkeyPatch, prefect: str
) -> None:
    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    s3.create_bucket("locked", object_lock=True)
    client = s3.client()
    until = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
    old_locked = key_of(dt.date(2026, 2, 14))
    client.put_object(
        Bucket="locked",
        Key=old_locked,
        Body=b"x",
        ObjectLockMode="COMPLIANCE",
        ObjectLockRetainUntilDate=until,
    )
    old_free = key_of(dt.date(2026, 2, 15))
    client.put_object(Bucket="locked", Key=old_free, Body=b"x")
    newest = key_of(dt.date(2026, 11, 25))
    client.put_object(Bucket="locked", Key=newest, Body=b"x")

    policy = RetentionPolicy(keep_last=1, daily=0, weekly=0, monthly=0)
    result = prune("s3://locked", policy, newest, bucket="locked")
    assert result["locked"] == [old_locked]
    assert result["deleted"] == [old_free]
    keys = [o["Key"] for o in client.list_objects_v2(Bucket="locked", Prefix=PREFIX)["Contents"]]
    assert sorted(keys) == sorted([old_locked, newest])


def test_the_prune_flow_runs_for_real_and_keeps_the_newest(
    s3: SeaweedS3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prefect: str
) -> None:
    """The scheduled `prune-backups` flow: the cluster's pinned id scopes it, the newest backup
    of each store is kept without being named, and S3 and the local copies are both pruned."""
    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    s3.create_bucket("flow")
    client = s3.client()
    for day in all_days():
        client.put_object(Bucket="flow", Key=key_of(day), Body=b"x")
        path = tmp_path / key_of(day)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    other = "jaco/c2/2026/01/01/cluster-2026-01-01-1.tar.gz.age"  # another cluster's backup
    client.put_object(Bucket="flow", Key=other, Body=b"x")
    params = PruneParams(
        cluster="c1",
        bucket="flow",
        local_dir=str(tmp_path),
        cluster_id="c1",
        retention=RetentionPolicy(keep_last=1, daily=0, weekly=0, monthly=0),
    )
    state = prune_backups(params, return_state=True)
    assert state.is_completed(), state.message
    s3_result, local_result = state.result()
    newest = key_of(all_days()[-1])
    assert s3_result["kept"] == [newest] and local_result["kept"] == [newest]
    assert len(s3_result["deleted"]) == len(all_days()) - 1
    keys = [o["Key"] for o in client.list_objects_v2(Bucket="flow")["Contents"]]
    assert sorted(keys) == sorted([newest, other])
    assert [p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.age")] == [newest]


def test_the_change_segments_of_pruned_backups_go_with_them(
    s3: SeaweedS3, monkeypatch: pytest.MonkeyPatch, prefect: str
) -> None:
    """A backup's segment chain is no use without it: pruned with it (objects and catalog
    records), as is a chain whose backup a run that died midway already deleted. Kept
    backups keep their chains; another cluster's segments are not touched."""
    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    s3.create_bucket("chains")
    client = s3.client()
    days = all_days()[-5:]
    for day in days:
        client.put_object(Bucket="chains", Key=key_of(day), Body=b"x")
    stems = [key_of(day).rsplit("/", 1)[-1].removesuffix(".tar.gz.age") for day in days]
    chains = {stem: stem for stem in stems} | {"orphan": "cluster-2025-12-31-1"}
    for stem in chains.values():
        for first in (10, 20):
            client.put_object(
                Bucket="chains", Key=f"jaco/segments/c1/{stem}/{first:016d}.seg.age", Body=b"s"
            )
            client.put_object(
                Bucket="chains",
                Key=f"jaco/catalog/c1/segments/{stem}/{first:016d}.json",
                Body=b"{}",
            )
    theirs = f"jaco/segments/c2/{stems[0]}/{10:016d}.seg.age"  # another cluster, same stem
    client.put_object(Bucket="chains", Key=theirs, Body=b"s")

    def listed(prefix: str) -> set[str]:
        found = client.list_objects_v2(Bucket="chains", Prefix=prefix).get("Contents", [])
        return {o["Key"].split("/")[-2] for o in found}

    policy = RetentionPolicy(keep_last=2, daily=0, weekly=0, monthly=0)
    dry = prune("s3://chains", policy.model_copy(update={"dry_run": True}), key_of(days[-1]),
                bucket="chains")  # fmt: skip
    assert dry["segments_deleted"] == 8  # 3 pruned backups and the orphan, 2 segments each
    assert listed("jaco/segments/c1/") == set(chains.values())

    result = prune("s3://chains", policy, key_of(days[-1]), bucket="chains")
    assert result["segments_deleted"] == 8
    assert listed("jaco/segments/c1/") == set(stems[-2:])
    assert listed("jaco/catalog/c1/segments/") == set(stems[-2:])
    assert client.head_object(Bucket="chains", Key=theirs)["ContentLength"] == 1

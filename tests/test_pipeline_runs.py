"""The pipeline's runs over time, for real: the every-Nth drill counter and the
`prune-backups` flow over real backups, in both stores and their catalogs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flows.backup_flow import backup_cluster
from flows.catalog import Catalog
from flows.params import PruneParams
from flows.prune_flow import prune_backups
from flows.retention import RetentionPolicy
from flows.storage import open_store
from tests.pipeline import BUCKET, params


def _backups(stored: dict[str, Any], local: Path, name: str, count: int, **over: Any) -> list[Any]:
    """`count` backups of the stored cluster as cluster `name` (its catalog at prefix `name`)."""
    results = []
    for _ in range(count):
        p = params(stored["cluster"], stored["keys"], local, cluster=name, prefix=name, **over)
        state = backup_cluster(p, return_state=True)
        assert state.is_completed(), state.message
        results.append(state.result())
    return results


def test_every_third_backup_is_drilled(stored1: dict[str, Any], tmp_path: Path) -> None:
    name = "every-third"
    runs = _backups(stored1, tmp_path / "local", name, 3, drill_every=3, drill_driver="bwrap")
    assert [r["drill"] is None for r in runs] == [True, True, False]
    drill = runs[2]["drill"]
    assert drill["key"] == runs[2]["key"] and drill["driver"] == "bwrap"
    assert drill["checks"] and all(c["ok"] for c in drill["checks"])
    catalog = Catalog(open_store(f"s3://{BUCKET}"), name, name)
    drilled = [catalog.backup(r["key"]) for r in runs]
    assert [b is not None and b.last_drill is not None for b in drilled] == [False, False, True]
    last = drilled[2]
    assert last is not None and last.last_drill is not None and last.last_drill.passed


def test_prune_flow_keeps_the_newest_in_both_stores_and_catalogs(
    stored1: dict[str, Any], tmp_path: Path
) -> None:
    name = "pruned"
    local = tmp_path / "local"
    keys = [r["key"] for r in _backups(stored1, local, name, 3)]
    s3_store, local_store = open_store(f"s3://{BUCKET}"), open_store(str(local))

    def stored_keys() -> dict[str, list[str]]:
        return {
            store.name: sorted(
                o.key for o in store.list(f"{name}/") if o.key.endswith(".tar.gz.age")
            )
            for store in (s3_store, local_store)
        }

    def cataloged() -> dict[str, list[str]]:
        return {
            store.name: sorted(b.key for b in Catalog(store, name, name).backups())
            for store in (s3_store, local_store)
        }

    everything = {s.name: sorted(keys) for s in (s3_store, local_store)}
    assert stored_keys() == everything and cataloged() == everything
    newest_only = RetentionPolicy(keep_last=1, daily=0, weekly=0, monthly=0)
    where = {"cluster": name, "bucket": BUCKET, "prefix": name, "local_dir": str(local)}

    dry = prune_backups(
        PruneParams(**where, retention=newest_only.model_copy(update={"dry_run": True})),
        return_state=True,
    )
    assert dry.is_completed(), dry.message
    assert [r["deleted"] for r in dry.result()] == [sorted(keys[:2])] * 2
    assert stored_keys() == everything and cataloged() == everything  # a dry run deletes nothing

    state = prune_backups(PruneParams(**where, retention=newest_only), return_state=True)
    assert state.is_completed(), state.message
    for result in state.result():
        assert result["kept"] == [keys[2]] and result["deleted"] == sorted(keys[:2])
    newest = {s.name: [keys[2]] for s in (s3_store, local_store)}
    assert stored_keys() == newest
    assert cataloged() == newest

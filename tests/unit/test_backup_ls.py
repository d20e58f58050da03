"""`jaco backup ls` shows a verified backup as the newest, and as the restorable window's base,
only while its object is stored.

A catalog record outlives an object deleted by hand or by a bucket's lifecycle rule. The
listing marked such a backup verified and counted it as "newest verified backup … ago": a
green the store could not back. Read against a real local store (the pipeline's local copies)
and the real CLI.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from flows.catalog import Catalog
from flows.records import Verified
from flows.storage import open_store
from infra.localcluster import JACO, run
from tests.unit.test_describe import _record


def test_a_verified_backup_whose_object_is_gone_is_shown_gone_not_newest(tmp_path: Path) -> None:
    now = dt.datetime.now(dt.UTC)
    catalog = Catalog(open_store(f"file://{tmp_path}"), "jaco", "alpha")
    keys = []
    for hours, index in ((5, 40), (1, 41)):
        name = f"cluster-2026-12-04-{index}.tar.gz.age"
        record = _record("alpha", name).model_copy(
            update={
                "taken_at": now - dt.timedelta(hours=hours),
                "snapshot_index": index,
                "verified": Verified(at=now - dt.timedelta(hours=hours)),
            }
        )
        catalog.record_backup(record)
        (tmp_path / record.key).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / record.key).write_bytes(b"x")
        keys.append(record.key)
    older, newer = keys
    (tmp_path / newer).unlink()  # deleted by hand: its record stays
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))

    listed = run([JACO, "backup", "ls", "--store", str(tmp_path), "--json"])
    assert listed.code == 0, listed.err
    [view] = json.loads(listed.out)
    stored = {b["key"]: b["stored"] for b in view["backups"]}
    assert stored == {older: True, newer: False}

    shown = run([JACO, "backup", "ls", "--store", str(tmp_path)])
    assert shown.code == 0, shown.err
    assert "newest verified backup 5.0h ago" in shown.out, shown.out
    rows = {line.split("│")[1].strip(): line for line in shown.out.splitlines() if "│" in line}
    assert "GONE" in rows["41"] and "GONE" not in rows["40"], shown.out
    assert f"verified backup {newer} is gone from the store" in shown.out, shown.out
    # the restorable window rests on the backup still stored, not on the one gone
    assert "(revision 40, segments of cluster-2026-12-04-40)" in shown.out, shown.out
    assert view["window"]["base"] == "cluster-2026-12-04-40"
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_listings_in_a_pipe_show_keys_and_checksums_whole(tmp_path: Path) -> None:
    """Rich fits a table to 80 columns in a pipe by cutting cells with "…": `backup ls` cut the
    file names an operator passes to `backup describe`, which cut the checksums."""
    catalog = Catalog(open_store(f"file://{tmp_path}"), "jaco", "alpha")
    names = [f"cluster-2026-12-04-{index}.tar.gz.age" for index in (41, 12345678)]
    for name in names:
        catalog.record_backup(_record("alpha", name))
    env = {"COLUMNS": "80"}

    listed = run([JACO, "backup", "ls", "--store", str(tmp_path)], env=env)
    assert listed.code == 0, listed.err
    rows = [line for line in listed.out.splitlines() if ".tar.gz.age" in line]
    assert sorted(line.split()[0] for line in rows) == sorted(names), listed.out
    assert "…" not in listed.out, listed.out

    shown = run([JACO, "backup", "describe", names[1], "--store", str(tmp_path)], env=env)
    assert shown.code == 0, shown.err
    assert "…" not in shown.out, shown.out
    for digest in ("0" * 64, "1" * 64, "2" * 64, "3" * 64):
        assert digest in shown.out, shown.out

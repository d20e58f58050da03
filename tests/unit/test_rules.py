"""The model's rules and the archive's shape, without a cluster: seconds, not minutes.

`pytest tests/unit` checks a rule (IP allocation, placement, tokens, the audit chain, names
and hosts, meta.json, retention) before the end-to-end suite proves it against real
processes.
"""

from __future__ import annotations

import ast
import datetime as dt
import json
import re
import tracemalloc
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import jaco.errors
from flows.retention import Backup, RetentionPolicy, parse_key, to_keep
from jaco.archive.age import DecryptionFailed
from jaco.archive.meta import BackupMeta
from jaco.errors import (
    ArchiveError,
    Conflict,
    IncompatibleVersion,
    InvalidArgument,
    Unauthenticated,
    Unavailable,
    is_retryable,
)
from jaco.model import audit, ipam, scheduler, tokens
from jaco.model.digest import StateDigest
from jaco.model.engine import Change
from jaco.model.names import check_host, check_name


def test_ipam_hands_out_the_lowest_free_addresses_after_the_gateway() -> None:
    assert ipam.allocate("10.0.0.0/29", [], 3) == ["10.0.0.2", "10.0.0.3", "10.0.0.4"]
    assert ipam.allocate("10.0.0.0/29", ["10.0.0.2", "10.0.0.4"], 2) == ["10.0.0.3", "10.0.0.5"]
    with pytest.raises(Conflict, match="no free address"):
        ipam.allocate("10.0.0.0/29", [], 6)  # 6 hosts, one of them the gateway
    with pytest.raises(InvalidArgument, match="too small"):
        ipam.check_subnet("10.0.0.0/30")
    with pytest.raises(InvalidArgument, match="invalid subnet"):
        ipam.check_subnet("10.0.0.1/24")


def test_scheduler_levels_the_load_and_needs_a_node() -> None:
    assert scheduler.place(["a", "b"], Counter({"a": 2}), 3) == ["b", "b", "a"]
    with pytest.raises(Unavailable):
        scheduler.place([], Counter(), 1)


def test_tokens_parse_pin_and_compare() -> None:
    token = tokens.new_token(tokens.OPERATOR, "f" * 64)
    parsed = tokens.parse_token(str(token))
    assert parsed == token and parsed.ca_fingerprint == "f" * 64
    assert tokens.matches(parsed, token.sha256)
    assert not tokens.matches(parsed, tokens.hash_token("something else"))
    assert not tokens.matches(parsed, None)  # an unknown id never matches
    with pytest.raises(Unauthenticated, match="not a join token"):
        tokens.parse_token(str(token), tokens.JOIN)
    with pytest.raises(Unauthenticated, match="malformed"):
        tokens.parse_token(str(token)[:-1] + "!")


def _chain(n: int) -> list[dict[str, Any]]:
    events, prev = [], audit.GENESIS_HASH
    for seq in range(1, n + 1):
        event = audit.make_event(seq, prev, "X", "test", "2026-01-01T00:00:00Z", {"n": seq})
        events.append(event)
        prev = event["hash"]
    return events


def _head(events: list[dict[str, Any]]) -> dict[str, Any]:
    return {"seq": events[-1]["seq"], "hash": events[-1]["hash"]}


def test_audit_chain_catches_edits_gaps_and_a_cut_head() -> None:
    events = _chain(5)
    assert audit.verify_chain(events, _head(events)).ok
    edited = [dict(e) for e in events]
    edited[2]["detail"] = {"n": 99}
    assert audit.verify_chain(edited, _head(events)).first_bad_seq == 3
    gap = events[:2] + events[3:]
    assert audit.verify_chain(gap, _head(events)).reason == "event 3 is missing"
    assert not audit.verify_chain(events[:4], _head(events)).ok
    assert audit.verify_chain([*events[:2], None], None).reason == "it is not a valid JSON event"
    # The head deleted with the last events: what is left links, but its end is not proven.
    headless = audit.verify_chain(events[:3], None)
    assert not headless.ok and not headless.chain_ok and headless.first_bad_seq == 4
    assert headless.reason.startswith("the audit head is missing")
    assert audit.verify_chain([], None).ok  # no event yet, and so no head
    assert audit.parse_event(b"not json") is None and audit.parse_event(b"[1]") is None


def test_audit_anchor_catches_a_history_rewritten_with_every_hash_recomputed() -> None:
    events = _chain(5)
    anchor = audit.Anchor(4, events[3]["hash"], "backup 1")
    assert audit.verify_chain(events, _head(events), [anchor]).ok
    # Rewrite event 3 and recompute every later hash and the head: the chain is "intact"...
    rewritten, prev = [], audit.GENESIS_HASH
    for e in events:
        detail = {"n": 99} if e["seq"] == 3 else e["detail"]
        new = audit.make_event(e["seq"], prev, e["type"], e["actor"], e["at"], detail)
        rewritten.append(new)
        prev = new["hash"]
    assert audit.verify_chain(rewritten, _head(rewritten)).ok
    # ...but not against the anchor recorded before the rewrite.
    check = audit.verify_chain(rewritten, _head(rewritten), [anchor])
    assert not check.ok and check.first_bad_seq == 4 and "rewritten" in check.reason
    # The chain itself holds: the drill's "audit history" passes, "audit anchors" fails.
    assert check.chain_ok
    # Deleting the last events and fixing the head: caught by the anchor too.
    cut = events[:3]
    check = audit.verify_chain(cut, _head(cut), [anchor])
    assert not check.ok and "removed" in check.reason and check.chain_ok
    # A chain that is itself broken is not "intact", whatever the anchors.
    edited = [dict(e) for e in events]
    edited[1]["actor"] = "someone-else"
    assert not audit.verify_chain(edited, _head(events), [anchor]).chain_ok
    assert not audit.verify_chain(events[:4], _head(events), [anchor]).chain_ok  # head cut
    assert audit.verify_chain(events, _head(events), [anchor]).chain_ok


def test_the_walk_gives_the_numbers_of_the_event_types_asked_for() -> None:
    """The drill finds its RESTORE_COMPLETED event in the same walk that verifies the chain
    (a listing was a second read of the whole log)."""
    prev, events = audit.GENESIS_HASH, []
    for seq, type_ in enumerate(["X", "RESTORE_COMPLETED", "X", "Y", "RESTORE_COMPLETED"], 1):
        events.append(audit.make_event(seq, prev, type_, "t", "2026-01-01T00:00:00Z", {}))
        prev = events[-1]["hash"]
    head = _head(events)
    assert audit.verify_chain(events, head).found == ()
    walk = audit.ChainWalk([], {"RESTORE_COMPLETED", "Y"})
    assert all(walk.add(e) for e in events)
    assert walk.result(head).found == (2, 4, 5)
    # A broken chain: the walk stops there, and gives what it found before.
    walk = audit.ChainWalk([], {"RESTORE_COMPLETED"})
    assert [walk.add(e) for e in [events[0], events[1], events[3]]] == [True, True, False]
    check = walk.result(head)
    assert not check.chain_ok and check.found == (2,)
    # A forged event whose type is not a string (hash recomputed) is walked, not a crash.
    forged = audit.make_event(1, audit.GENESIS_HASH, ["RESTORE_COMPLETED"], "t", "x", {})  # type: ignore[arg-type]
    walk = audit.ChainWalk([], {"RESTORE_COMPLETED"})
    assert walk.add(forged) and walk.result(_head([forged])).found == ()


def test_a_long_chain_is_verified_in_memory_that_does_not_grow_with_it() -> None:
    """jacod verifies a cluster's whole audit log (10⁶ events and more) a page at a time: the
    walk keeps the anchors' hashes, not one per event."""
    n = 50_000

    def lazily() -> Iterator[dict[str, Any]]:
        prev = audit.GENESIS_HASH
        for seq in range(1, n + 1):
            event = audit.make_event(seq, prev, "X", "t", "2026-01-01T00:00:00Z", {})
            prev = event["hash"]
            yield event
            if seq == n // 2:
                anchors.append(audit.Anchor(seq, prev, "backup"))

    anchors: list[audit.Anchor] = []
    walk = audit.ChainWalk([])
    tracemalloc.start()
    try:
        for event in lazily():
            assert walk.add(event)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    last = {"seq": n, "hash": walk.prev_hash}
    assert walk.result(last) == audit.ChainCheck(True, n, chain_ok=True)
    assert peak < 1024 * 1024, peak  # one hash per event held was about 9 MB here
    check = audit.verify_chain(lazily(), last, anchors)
    assert check.ok and check.anchors_checked == 1


def test_names_and_hosts() -> None:
    assert check_name("node", "node-1") == "node-1"
    for bad in ("Node", "-a", "a-", "a_b", "", "x" * 64):
        with pytest.raises(InvalidArgument):
            check_name("node", bad)
    assert check_host("10.0.0.1") == "10.0.0.1"
    assert check_host("[::1]") == "::1"
    assert check_host("Node-1.Example.com") == "node-1.example.com"
    assert check_host("bücher.de") == "xn--bcher-kva.de"
    for bad in ("évil..", "a b", "", "-x.com", "x" * 64 + ".com", "a\x1b[2J"):
        with pytest.raises(InvalidArgument, match="invalid host"):
            check_host(bad)


def _meta(**over: Any) -> dict[str, Any]:
    meta = {
        "cluster_id": "c0ffee",
        "snapshot_index": 42,
        "snapshot_term": 3,
        "jaco_version": "1.0.0",
        "taken_at": "2026-11-26T00:00:00+00:00",
        "leader_at_snapshot": "node-1",
        "format": 2,
        "snapshot_sha256": "a" * 64,
        "snapshot_size": 10,
        "counts": {"deployments": 1},
        "state_digest": "b" * 64,
    }
    meta.update(over)
    return meta


def test_meta_round_trips_and_refuses_what_is_not_meta() -> None:
    meta = BackupMeta.parse(json.dumps(_meta()))
    assert BackupMeta.parse(meta.to_json()) == meta
    assert meta.taken_at == dt.datetime(2026, 11, 26, tzinfo=dt.UTC)
    with pytest.raises(ArchiveError, match="lacks the field 'snapshot_index'"):
        BackupMeta.parse(json.dumps({k: v for k, v in _meta().items() if k != "snapshot_index"}))
    with pytest.raises(ArchiveError, match="'snapshot_index' has the wrong type"):
        BackupMeta.parse(json.dumps(_meta(snapshot_index="42")))
    with pytest.raises(ArchiveError, match=r"format 9 is not supported \(.*formats 1, 2, 3\)"):
        BackupMeta.parse(json.dumps(_meta(format=9)))
    assert [BackupMeta.parse(json.dumps(_meta(format=f))).digest_version for f in (1, 2, 3)] == [
        1,
        1,
        2,
    ]
    for markup in ("[bold red blink]x", "\x1b[2J", "a\nerror: fake"):
        with pytest.raises(ArchiveError, match="'cluster_id' has the wrong type or form"):
            BackupMeta.parse(json.dumps(_meta(cluster_id=markup)))
    with pytest.raises(ArchiveError, match="not a JSON object"):
        BackupMeta.parse("[" * 60_000)  # deep nesting under the size cap: no RecursionError
    with pytest.raises(ArchiveError, match="larger than any real one"):
        BackupMeta.parse(json.dumps(_meta(pad="x" * 100_000)))
    with pytest.raises(IncompatibleVersion, match="same major version"):
        BackupMeta.parse(json.dumps(_meta(jaco_version="2.0.0"))).check_version()


def test_state_digest_leaves_out_liveness_and_other_prefixes() -> None:
    one, two = StateDigest(), StateDigest()
    for d in (one, two):
        d.add(b"/jaco/v1/deployments/web", b"{}")
    two.add(b"/jaco/v1/alive/node-1", b"beat")
    two.add(b"/other/key", b"x")
    assert one.result() == two.result() == ({"deployments": 1}, one.result()[1])
    three = StateDigest()
    three.add(b"/jaco/v1/deployments/web", b"{ }")
    assert three.result()[1] != one.result()[1]


def test_retention_keeps_the_newest_and_one_per_period() -> None:
    day = dt.date(2026, 11, 27)
    backups = [
        Backup(f"k/cluster-{(day - dt.timedelta(days=d)).isoformat()}-{i}.tar.gz.age",
               day - dt.timedelta(days=d), i)
        for d in range(40) for i in (1, 2)
    ]  # fmt: skip
    keep = to_keep(backups, RetentionPolicy(keep_last=3, daily=5, weekly=0, monthly=0))
    # keep_last: 27-2, 27-1, 26-2; daily: the newest of each of 5 days, 27-2 ... 23-2.
    assert keep == {f"k/cluster-2026-11-{d}-{i}.tar.gz.age" for d, i in
                    [(27, 2), (27, 1), (26, 2), (25, 2), (24, 2), (23, 2)]}  # fmt: skip
    assert parse_key("jaco/x/2026/11/27/cluster-2026-11-27-9.tar.gz.age") == Backup(
        "jaco/x/2026/11/27/cluster-2026-11-27-9.tar.gz.age", day, 9
    )
    assert parse_key("jaco/x/notes.txt") is None


def test_retention_keeps_each_periods_newest_verified_backup() -> None:
    """A period whose newest backup is unverified (verify could not finish) keeps its newest
    verified one instead; a period with none verified keeps its newest, as before."""
    day = dt.date(2026, 11, 27)
    backups = [
        Backup(f"k/cluster-{(day - dt.timedelta(days=d)).isoformat()}-{i}.tar.gz.age",
               day - dt.timedelta(days=d), i)
        for d in range(5) for i in (1, 2, 3)
    ]  # fmt: skip
    name = "k/cluster-2026-11-{}-{}.tar.gz.age".format
    verified = {name(26, 1), name(25, 2), name(25, 3), name(24, 1), name(24, 2)}
    keep = to_keep(backups, RetentionPolicy(keep_last=1, daily=4, weekly=0, monthly=0), verified)
    # keep_last: 27-3; daily: 27 none verified -> 27-3; 26 -> 26-1; 25 -> 25-3; 24 -> 24-2.
    assert keep == {name(27, 3), name(26, 1), name(25, 3), name(24, 2)}
    assert to_keep(backups, RetentionPolicy(keep_last=1, daily=4, weekly=0, monthly=0)) == {
        name(27, 3),
        name(26, 3),
        name(25, 3),
        name(24, 3),
    }


def test_errors_say_whether_a_retry_can_help() -> None:
    assert is_retryable(Unavailable("x")) and is_retryable(Conflict("x"))
    assert not is_retryable(InvalidArgument("x")) and not is_retryable(ArchiveError("x"))
    assert is_retryable(ConnectionResetError())  # not ours: assumed transient


def test_the_documented_exit_codes_are_the_errors_codes() -> None:
    """docs/backups.md's exit code table names each error class with its code."""
    doc = (Path(__file__).resolve().parents[2] / "docs" / "backups.md").read_text()
    rows = re.findall(r"^\| (\d+) \|.*\(`(\w+)`\)", doc[doc.index("### Exit codes") :], re.M)
    base = jaco.errors.JacoError
    errors = [
        c
        for c in vars(jaco.errors).values()
        if isinstance(c, type) and issubclass(c, base) and c is not base
    ]
    expected = {c.__name__: c.exit_code for c in [*errors, DecryptionFailed]}
    assert {name: int(code) for code, name in rows} == expected


def test_the_documented_automation_is_one_prefect_accepts() -> None:
    import yaml
    from prefect.events.schemas.automations import AutomationCore

    path = __import__("pathlib").Path(__file__).parents[2] / "docs/automation-failed-backup.yaml"
    automation = AutomationCore.model_validate(yaml.safe_load(path.read_text()))
    assert "prefect.flow-run.Crashed" in automation.trigger.expect  # type: ignore[union-attr]


def test_the_shipped_deployment_files_are_valid() -> None:
    """deployments/prefect.yaml and clusters.toml work as shipped: every entrypoint names a
    flow, every parameter set is one its flow accepts."""
    import importlib
    from pathlib import Path

    import yaml

    from flows.config import load_config

    top = Path(__file__).parents[2]
    load_config(top / "deployments/clusters.toml")
    for deployment in yaml.safe_load((top / "deployments/prefect.yaml").read_text())["deployments"]:
        module, _, name = deployment["entrypoint"].rpartition(".")
        flow = getattr(importlib.import_module(module), name)
        model = flow.fn.__annotations__["params"]
        model = getattr(importlib.import_module(flow.fn.__module__), model)
        model.model_validate(deployment["parameters"]["params"])


def test_every_audit_event_type_the_code_writes_is_listed() -> None:
    """The event types passed as literals to Change.audit, Engine.record and update_node,
    read from the code, are exactly audit.EVENT_TYPES (what `jaco audit --type` accepts);
    and a type not listed cannot be written at all."""
    written: set[str] = set()
    for path in (Path(__file__).resolve().parents[2] / "jaco").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            if node.func.attr in ("audit", "record", "update_node"):
                written |= {
                    arg.value
                    for arg in node.args
                    if isinstance(arg, ast.Constant)
                    and isinstance(arg.value, str)
                    and re.fullmatch(r"[A-Z][A-Z_]+", arg.value)
                }
    assert written == set(audit.EVENT_TYPES)
    assert list(audit.EVENT_TYPES) == sorted(audit.EVENT_TYPES)  # shown in this order
    with pytest.raises(ValueError, match="not in jaco.model.audit.EVENT_TYPES"):
        Change().audit("SOMETHING_NEW")
    assert audit.check_types(["backup_taken"]) == {"BACKUP_TAKEN"}
    with pytest.raises(InvalidArgument, match="invalid --type 'NOPE': use one of BACKUP_TAKEN"):
        audit.check_types(["nope"])


def test_listed_events_are_well_formed_or_damaged() -> None:
    good = audit.make_event(
        1, audit.GENESIS_HASH, "BACKUP_TAKEN", "token:x", "2026-01-01T00:00:00+00:00", {}
    )
    assert audit.listed_event("000000000001", json.dumps(good).encode()) == good
    for raw in (
        b"not json {",
        b"[]",
        b'{"seq": "x"}',
        json.dumps({**good, "at": "yesterday"}).encode(),
        json.dumps({**good, "at": "2026-01-01T00:00:00"}).encode(),  # no zone
        json.dumps({**good, "seq": -1}).encode(),
        json.dumps({**good, "hash": 5}).encode(),
        b"[" * 100_000,
    ):
        listed = audit.listed_event("000000000007", raw)
        assert listed["type"] == audit.DAMAGED and listed["seq"] == 7, raw[:40]
    assert audit.listed_event("zzz", b"x")["seq"] == 0

"""The drill's two audit checks read from one verification: the rule each applies to its
answer. (Against real restored nodes: tests/test_drill_flow.py and test_drill_checks.py.)"""

from __future__ import annotations

from typing import Any

import pytest

from jaco.archive.meta import AuditHead, BackupMeta
from jaco.drill.checks import AuditChain, Expect
from jaco.errors import Unavailable
from jaco.v1 import jaco_pb2 as pb
from tests.archives import a_meta

HISTORY = 10  # the backup's audit head: events 1…10


def _meta() -> BackupMeta:
    return a_meta(
        snapshot_index=5,
        counts={"audit": HISTORY + 1},
        audit_head=AuditHead(seq=HISTORY, hash="a" * 64),
    )


class _Node:
    """The restored node's answer to VerifyAudit (or its failure), and what was asked."""

    def __init__(self, reply: Any) -> None:
        self.reply, self.asked = reply, 0

    def call(self, method: str, request: Any, timeout: float | None = None) -> Any:
        assert method == "VerifyAudit" and list(request.find_types) == ["RESTORE_COMPLETED"]
        self.asked += 1
        if isinstance(self.reply, Exception):
            raise self.reply
        return self.reply


def _history(found: list[int], chain_ok: bool = True) -> tuple[bool, str]:
    reply = pb.AuditVerification(
        ok=chain_ok, chain_ok=chain_ok, events=HISTORY + 1, found_seqs=found, anchors_checked=1
    )
    return AuditChain(_meta(), Expect(cluster_id="c1"), _Node(reply)).history()  # type: ignore[arg-type]


def test_this_restore_and_only_it_after_the_backup_s_history() -> None:
    assert _history([HISTORY + 1]) == (
        True,
        f"{HISTORY} historical events, 1 RESTORE_COMPLETED (seq {HISTORY + 1}), chain intact",
    )
    # A cluster restored once before, in the history the backup holds: that is its past.
    assert _history([3, HISTORY + 1])[0]
    assert not _history([])[0]
    assert not _history([HISTORY + 1, HISTORY + 2])[0]
    assert not _history([HISTORY + 2])[0]
    assert not _history([HISTORY + 1], chain_ok=False)[0]


def test_a_verification_that_failed_fails_both_checks_and_is_asked_once() -> None:
    node = _Node(Unavailable("the server did not answer in time: Deadline Exceeded"))
    chain = AuditChain(_meta(), Expect(cluster_id="c1"), node)  # type: ignore[arg-type]
    for check in (chain.history, chain.anchors_hold):
        with pytest.raises(Unavailable):
            check()
    assert node.asked == 1

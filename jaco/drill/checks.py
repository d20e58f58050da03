"""The drill's checks of a restored node, each through the node's API with an operator token
from before the backup (what an operator would do), never with the node's own credentials.

Each returns (passed, detail); a check that cannot run (an error, a missing answer) fails.
The expectations come from the backup's verified meta.json and from the pipeline's catalog
(the cluster id it pinned, the audit heads of earlier backups).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from jaco.archive.meta import BackupMeta
from jaco.client.connection import WHOLE_STORE_TIMEOUT, Client
from jaco.client.history import state_at
from jaco.model.tokens import parse_token
from jaco.v1 import jaco_pb2 as pb


@dataclass(frozen=True)
class Expect:
    """What the drilled backup must be and hold, as the pipeline recorded it."""

    cluster_id: str
    snapshot_index: int = 0
    plaintext_sha256: str = ""
    anchors: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def parse(cls, raw: dict[str, Any]) -> Expect:
        return cls(
            cluster_id=str(raw["cluster_id"]),
            snapshot_index=int(raw.get("snapshot_index", 0)),
            plaintext_sha256=str(raw.get("plaintext_sha256", "")),
            anchors=list(raw.get("anchors", [])),
        )


Result = tuple[bool, str]


def cluster_id(meta: BackupMeta, expect: Expect, status: Any) -> Result:
    ok = meta.cluster_id == expect.cluster_id == status.cluster_id
    return ok, (
        f"restored {status.cluster_id}; backup's meta.json {meta.cluster_id}; "
        f"drilled cluster {expect.cluster_id}"
    )


def deployments(meta: BackupMeta, status: Any) -> Result:
    deps = list(status.deployments)
    replicas = [r for d in deps for r in d.placed]
    want_deps, want_replicas = meta.counts.get("deployments", 0), meta.counts.get("replicas", 0)
    ok = len(deps) == want_deps and len(replicas) == want_replicas
    return ok, (
        f"{len(deps)} deployments / {len(replicas)} replicas; backup had "
        f"{want_deps} / {want_replicas}"
    )


def ip_uniqueness(status: Any) -> Result:
    ips = [r.ip for d in status.deployments for r in d.placed]
    distinct = len(set(ips))
    return len(ips) == distinct, f"{len(ips)} replica IPs, {distinct} distinct"


RESTORED = "RESTORE_COMPLETED"


class AuditChain:
    """The restored audit log, verified once for both audit checks: one `VerifyAudit` with
    every anchor (this backup's own head, the catalog's earlier ones) answers whether the
    chain holds, whether the anchors do, and where the RESTORE_COMPLETED events are. At 10⁶
    keys one verification takes about 12 s, so the two checks share it."""

    def __init__(self, meta: BackupMeta, expect: Expect, client: Client) -> None:
        self.meta, self.client = meta, client
        self.anchors = [pb.AuditAnchor(**a) for a in expect.anchors]
        if meta.audit_head is not None:
            head = meta.audit_head
            self.anchors.append(pb.AuditAnchor(seq=head.seq, hash=head.hash, source="meta.json"))
        self._reply: Any = None
        self._failed: Exception | None = None

    def _verified(self) -> Any:
        """The one verification. A call that failed fails both checks and is not asked again:
        each try may take WHOLE_STORE_TIMEOUT."""
        if self._failed is not None:
            raise self._failed
        if self._reply is None:
            request = pb.VerifyAuditRequest(anchors=self.anchors, find_types=[RESTORED])
            try:
                self._reply = self.client.call("VerifyAudit", request, timeout=WHOLE_STORE_TIMEOUT)
            except Exception as exc:
                self._failed = exc
                raise
        return self._reply

    def history(self) -> Result:
        """Every historical event is there, numbered 1…N, then exactly one
        RESTORE_COMPLETED, and the hash chain verifies.

        The chain's own check proves the numbering: every event from 1 on, none missing,
        `events` of them; the same walk gives the RESTORE_COMPLETED events' numbers (listing
        them would read the whole log again: about 12 s at 10⁶ keys). When the chain is
        broken the walk stops there, and the check fails on the chain."""
        meta = self.meta
        history = meta.audit_head.seq if meta.audit_head else meta.counts.get("audit", 1) - 1
        chain = self._verified()
        after = [seq for seq in chain.found_seqs if seq > history]
        ok = chain.chain_ok and chain.events >= history + 1 and after == [history + 1]
        broken = f"BROKEN at {chain.first_bad_seq}: {chain.reason}"
        return ok, (
            f"{history} historical events, {len(after)} {RESTORED} "
            f"(seq {after[0] if after else '-'}), chain "
            f"{'intact' if chain.chain_ok else broken}"
        )

    def anchors_hold(self) -> Result:
        """The restored chain passes through this backup's own audit head and the heads the
        catalog recorded for earlier backups: history was not rewritten after them."""
        if not self.anchors:
            return False, "nothing to check against: the backup records no audit head"
        reply = self._verified()
        detail = f"{reply.anchors_checked} of {len(self.anchors)} anchors checked"
        if not reply.ok:
            return False, f"{detail}; event {reply.first_bad_seq}: {reply.reason}"
        return reply.anchors_checked == len(self.anchors), f"{detail}; the chain extends every one"


def ca_fingerprint(meta: BackupMeta, token: str, cluster: Any) -> Result:
    pinned = parse_token(token).ca_fingerprint
    expected = meta.ca_fingerprint or pinned
    ok = cluster.ca_fingerprint == expected == pinned
    return ok, (
        f"{cluster.ca_fingerprint[:16]}… (backup {expected[:16]}…, token pins {pinned[:16]}…)"
    )


def state_digest(meta: BackupMeta, client: Client) -> Result:
    """The running node's own store, read through its API at the snapshot index: the same
    records, counted and hashed the way the backup's meta.json was?"""
    index = meta.snapshot_index
    state = state_at(client, index, meta.digest_version)
    counts = dict(state.counts)
    ok = state.state_digest == meta.state_digest and counts == meta.counts
    return ok, (
        f"running store at index {index}: digest {state.state_digest[:16]}… "
        f"(backup {meta.state_digest[:16]}…), {sum(counts.values())} records"
    )

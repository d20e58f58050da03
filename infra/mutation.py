"""`make mutation`: break each safety check in turn and run the tests that must notice.

Each mutation is a precise textual replacement in one module of a scratch copy of this tree
(tracked and untracked files, as they are now). The tests run from the scratch copy with it
first on PYTHONPATH, so every process they start — jacod, the CLI, the drill agent in its
sandbox — runs the broken code too. A mutation whose text is not found is a failure of the
runner (the code moved on: update the list), never a pass. A control mutation, one every
listed drill test must notice, proves the harness reaches the code. Prints a table (check,
file, tests, caught) and exits non-zero if any break survived or did not apply.

    python -m infra.mutation                 # every mutation
    python -m infra.mutation --only restore  # those whose name contains "restore"
    python -m infra.mutation --unit          # those whose tests are all unit tests
    python -m infra.mutation --jobs 2        # two runners side by side, each its own copy
    python -m infra.mutation --list
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

RESTORE = "tests/test_restore_bad_input.py::test_restore_refuses_bad_archive"
DRILL = "tests/test_drill_checks.py"
AUTHZ = "tests/test_authorization.py"
VERIFY = "tests/test_verify.py"
PITR = "tests/test_pitr.py"
DRILL_UNIT = "tests/unit/test_drill_input.py"
SNAPSHOT = "tests/test_snapshot_file.py"
ENCRYPTED = "tests/test_restore_encrypted.py"
DRILL_FLOW = "tests/test_drill_flow.py"
UNIT = "tests/unit/"


@dataclass(frozen=True)
class Mutation:
    name: str
    path: str
    replacements: tuple[tuple[str, str], ...]
    tests: tuple[str, ...]


def m(name: str, path: str, old: str, new: str, *tests: str) -> Mutation:
    return Mutation(name, path, ((old, new),), tests)


def k(module: str, expr: str) -> str:
    """A test selection: MODULE, then pytest's -k EXPR (joined by '::-k ')."""
    return f"{module}::-k {expr}"


MUTATIONS: list[Mutation] = [
    m(
        "control: the sandboxed drill agent exits at once",
        "jaco/drill/agent.py",
        "    args = parser.parse_args()\n    if args.probe:",
        "    args = parser.parse_args()\n    sys.exit(3)\n    if args.probe:",
        k(DRILL, "revoked"),
    ),
    m(
        "archive: snapshot SHA-256 not checked",
        "jaco/archive/format.py",
        "    if snapshot[1] != meta.snapshot_sha256:",
        "    if False:",
        k(RESTORE, "flipped and not compressed"),
    ),
    m(
        "restore: state digest not compared",
        "jaco/node/restore.py",
        "    if state.state_digest != meta.state_digest:",
        "    if False:",
        k(RESTORE, "digest and matching"),
    ),
    m(
        "restore: record counts not compared (issue 17)",
        "jaco/node/restore.py",
        "    if state.counts != meta.counts:",
        "    if False:",
        k(RESTORE, "lie"),
    ),
    m(
        "restore: meta.json's CA not checked (issue 17)",
        "jaco/node/restore.py",
        "    if meta.ca_fingerprint is not None and meta.ca_fingerprint != pki.fingerprint(",
        "    if False and meta.ca_fingerprint != pki.fingerprint(",
        k(RESTORE, "another and CA and hashes"),
    ),
    m(
        "restore: cluster id not checked",
        "jaco/node/restore.py",
        '    if state.cluster.get("cluster_id") != meta.cluster_id:',
        "    if False:",
        k(RESTORE, "another and cluster"),
    ),
    m(
        "verify: plaintext SHA-256 not compared (issue 17)",
        "flows/tasks.py",
        "    if plain_sha != encrypted.plaintext_sha256:",
        "    if False:",
        k(VERIFY, "archive"),
    ),
    m(
        "verify: meta.json fields not compared (issue 17)",
        "flows/tasks.py",
        "        if getattr(meta, field) != getattr(taken, field):",
        "        if False:",
        k(VERIFY, "cluster_id or snapshot or state_digest"),
    ),
    m(
        "drill: cluster id refused before start skipped",
        "jaco/drill/agent.py",
        "        if meta.cluster_id != self.expect.cluster_id:",
        "        if False:",
        k(DRILL, "another_clusters"),
    ),
    m(
        "drill: cluster id check always passes",
        "jaco/drill/checks.py",
        "    ok = meta.cluster_id == expect.cluster_id == status.cluster_id",
        "    ok = True",
        k(DRILL, "checks_behind_restore"),
    ),
    m(
        "drill: deployments check always passes",
        "jaco/drill/checks.py",
        "    ok = len(deps) == want_deps and len(replicas) == want_replicas",
        "    ok = True",
        k(DRILL, "missing_deployment"),
    ),
    m(
        "drill: ip uniqueness check always passes",
        "jaco/drill/checks.py",
        "    return len(ips) == distinct, ",
        "    return True, ",
        k(DRILL, "replica_ips"),
    ),
    m(
        "drill: audit history check always passes",
        "jaco/drill/checks.py",
        "        ok = chain.chain_ok and chain.events >= history + 1",
        "        ok = True or chain.chain_ok and chain.events >= history + 1",
        k(DRILL, "audit_chain"),
    ),
    Mutation(
        "drill: audit anchors check always passes",
        "jaco/drill/checks.py",
        (
            (
                "        if not reply.ok:\n            return False",
                "        if False:\n            return False",
            ),
            (
                "        return reply.anchors_checked == len(self.anchors), ",
                "        return True, ",
            ),
        ),
        (k(DRILL, "rewritten or audit_chain"),),
    ),
    m(
        "drill: ca fingerprint check always passes (issue 17)",
        "jaco/drill/checks.py",
        "    ok = cluster.ca_fingerprint == expected == pinned",
        "    ok = True",
        k(DRILL, "checks_behind_restore"),
    ),
    m(
        "drill: state digest check always passes (issue 17)",
        "jaco/drill/checks.py",
        "    ok = state.state_digest == meta.state_digest and counts == meta.counts",
        "    ok = True",
        k(DRILL, "checks_behind_restore"),
    ),
    m(
        "backup: the received snapshot's SHA-256 not compared with meta.json",
        "jaco/archive/format.py",
        "                if reader.hexdigest() != described.snapshot_sha256:",
        "                if False:",
        k("tests/test_backup_stream.py", "naming and SHA"),
    ),
    m(
        "drill: the decrypted plaintext's SHA-256 not compared",
        "jaco/drill/agent.py",
        "        if found.plaintext_sha256 != self.expect.plaintext_sha256:",
        "        if False:",
        k(DRILL, "another_plaintext"),
    ),
    m(
        "drill: point-in-time digest not compared (issue 15)",
        "jaco/drill/agent.py",
        "        ok = restored == self.point.state_digest\n",
        "        ok = True\n",
        k(PITR, "rewritten"),
    ),
    m(
        "drill: a segment not the object the catalog recorded is drilled (issue 15)",
        "flows/drill_flow.py",
        "        if path.stat().st_size != size or sha256_file(path) != sha:",
        "        if False:",
        k(PITR, "rewritten"),
    ),
    m(
        "watchdog: a stream that stopped storing never alerts",
        "flows/watchdog_flow.py",
        "        elif lag > target.max_stream_lag:",
        "        elif False:",
        k(PITR, "beats"),
    ),
    m(
        "stream: the heartbeat says stored while segments wait for a store",
        "flows/stream.py",
        "        if self.pending:\n            durable = self.pending[0].opened_at",
        "        if False:\n            durable = self.pending[0].opened_at",
        k(PITR, "beats"),
    ),
    m(
        "stream: reading never pauses while a store fails (unbounded queue)",
        "flows/stream.py",
        "                if self._queued_bytes() >= self.settings.max_queued_bytes:",
        "                if False:",
        k(PITR, "chaos"),
    ),
    m(
        "stream: reading resumes a revision late after a pause",
        "flows/stream.py",
        "servers, token, self.seen_revision + 1)",
        "servers, token, self.seen_revision + 2)",
        k(PITR, "chaos"),
    ),
    m(
        "serve: deployments registered on a work pool are not refused",
        "deployments/build.py",
        "            if pooled and not for_pool:",
        "            if False:",
        k("tests/test_fleet.py", "one_process"),
    ),
    m(
        "serve --replace: the pool's deployments are re-created over, not replaced",
        "deployments/build.py",
        "            client.delete_deployment(client.read_deployment_by_name(name).id)",
        "            client.read_deployment_by_name(name)",
        k("tests/test_fleet.py", "one_process"),
    ),
    m(
        "serve: another site's watchdog (same name, clusters this site lacks) is taken over",
        "deployments/build.py",
        '            if flow.name == "watchdog" and (lacking := ',
        "            if False and (lacking := ",
        k("tests/test_deployments.py", "another_site"),
    ),
    m(
        "node remove: the node serving the call may remove itself",
        "jaco/server/join.py",
        "    if name == node.config.name:",
        "    if False:",
        k("tests/test_join.py", "lost"),
    ),
    m(
        "retention: the segments of pruned backups are kept",
        "flows/tasks.py",
        "    for base in sorted(bases - remaining):",
        "    for base in sorted(set[str]()):",
        k("tests/test_retention.py", "segments"),
    ),
    m(
        "drill: segment names from the header not checked (issue 15)",
        "jaco/drill/agent.py",
        "            if not SEGMENT_NAME.match(name) or not 0 < size <= MAX_SEGMENT_BYTES:",
        "            if not 0 < size <= MAX_SEGMENT_BYTES:",
        k(DRILL_UNIT, "segment"),
    ),
    m(
        "drill: old token check skipped",
        "jaco/drill/agent.py",
        'if not self.check("old token authenticates", old_token):',
        'if not self.check("old token authenticates", lambda: (True, "not asked")):',
        k(DRILL, "revoked"),
    ),
    m(
        "token: secret not compared",
        "jaco/model/tokens.py",
        "    return ok and stored_sha256 is not None",
        "    return stored_sha256 is not None",
        k(AUTHZ, "forged"),
    ),
    m(
        "role: viewers may write",
        "jaco/server/service.py",
        '        if access == WRITE and principal.role != "admin":',
        "        if False:",
        k(AUTHZ, "viewer"),
    ),
    m(
        "revocation: revoked tokens accepted",
        "jaco/model/access.py",
        '        if record.get("revoked"):\n            raise Unauthenticated(',
        "        if False:\n            raise Unauthenticated(",
        k(AUTHZ, "revoked"),
    ),
    m(
        "audit chain: event hashes not checked",
        "jaco/model/audit.py",
        '        if event_hash(event) != event.get("hash"):',
        "        if False:",
        k(DRILL, "audit_chain and edited"),
    ),
    m(
        "service: a viewer token may CreateToken (issue 17)",
        "jaco/server/service.py",
        '    "CreateToken": WRITE,',
        '    "CreateToken": READ,',
        k(AUTHZ, "CreateToken or access_row"),
    ),
    m(
        "service: the streaming Audit RPC does not authenticate (issue 17)",
        "jaco/server/service.py",
        '            await self.authorize(context, ACCESS["Audit"])\n',
        "",
        k(AUTHZ, "Audit and not Verify"),
    ),
    m(
        "native snapshot pass: of one key the oldest record is kept, not the latest (issue 16)",
        "native/src/sort.rs",
        "                .get(i + 1)\n",
        "                .get(i.wrapping_sub(1))\n",
        k(SNAPSHOT, "agrees or compiled"),
    ),
    m(
        "native snapshot pass: merging spilled runs, a key deleted last still counts (issue 16)",
        "native/src/sort.rs",
        "            Owned::Deleted => Ok(()),\n            record => each(&key, record.record()),",
        "            record => each(&key, record.record()),",
        k(SNAPSHOT, "spilling or compiled"),
    ),
    m(
        "native snapshot pass: keys alike in their first eight bytes are left unsorted (stop 23)",
        "native/src/sort.rs",
        "if j - i > 1 && digit.1 == 8 {",
        "if j - i > 1 && digit.1 == 8 && depth > usize::MAX - 8 {",
        k(SNAPSHOT, "spilling or compiled"),
    ),
    m(
        "native snapshot pass: an empty run is sorted as if it held an entry (stop 23)",
        "native/src/sort.rs",
        "            if end - start < 2 {\n",
        "            if end - start < 2 && end > start {\n",
        k(SNAPSHOT, "no_records"),
    ),
    Mutation(
        "native snapshot pass: the store revision counts only jaco's keys (issue 16)",
        "native/src/bolt.rs",
        (
            ("revision = revision.max(u64::from_be_bytes(rev[..8].try_into().unwrap()));", ""),
            (
                "                        return Ok(true);\n                    }\n",
                "                        return Ok(true);\n                    }\n"
                "revision = revision.max(u64::from_be_bytes(rev[..8].try_into().unwrap()));\n",
            ),
        ),
        (k(SNAPSHOT, "agrees"),),
    ),
    m(
        "native snapshot pass: a record claiming more than etcd allows is not refused (issue 16)",
        "native/src/bolt.rs",
        "vsize as u64 > MAX_RECORD",
        "vsize as u64 > u64::MAX - 1",
        k(SNAPSHOT, "damaged"),
    ),
    m(
        "site file: a misspelt nested key (s3, secrets, retention, watchdog) is ignored (stop 24)",
        "flows/config.py",
        'found += [f"{key}.{inner}" for inner in _unknown(value, field.annotation)]',
        "pass",
        "tests/unit/test_site_config.py",
    ),
    m(
        "snapshot reader: a missing jaco._native is not said, it is a traceback (stop 24)",
        "jaco/archive/snapshot_file.py",
        "    if _native is None:\n        raise InstallationError(MISSING)\n",
        "",
        k(RESTORE.split("::")[0], "compiled_reader"),
    ),
    m(
        "snapshot reader: a full scratch disk is an OSError, not jaco's error (stop 24)",
        "jaco/archive/snapshot_file.py",
        "        if disk_full(exc):",
        "        if False:",
        k(SNAPSHOT, "scratch_disk"),
    ),
    m(
        "ports: a port another process claimed is handed out again (stop 24)",
        "infra/ports.py",
        "    if shared:",
        "    if False:",
        "tests/unit/test_ports.py",
    ),
    m(
        "drill sweep: a dead run's container of another scope is removed too (stop 24)",
        "flows/sandbox.py",
        "            continue  # another scope's: its own drills sweep it",
        "            pass",
        k("tests/test_docker.py", "own_scope"),
    ),
    m(
        "backup stream: a data message's length is framed wrong past one varint byte (stop 25)",
        "jaco/server/convert.py",
        "    while size > 0x7F:",
        "    while size > 0xFF:",
        "tests/unit/test_wire.py",
    ),
    m(
        "backup stream: a client gone while etcd stalls leaves the receiver waiting (stop 25)",
        "jaco/server/snapshot.py",
        "            self._stream.cancel()  # wakes the thread if it waits for etcd",
        "            pass",
        k("tests/test_backup.py", "client_gone"),
    ),
    m(
        "backup describe: a full key describes another cluster's same-named backup (stop 25)",
        "jaco/cli/catalog.py",
        "    if exact:\n        return exact[0]\n",
        "",
        "tests/unit/test_describe.py",
    ),
    m(
        "backup stream: a snapshot call abandoned mid-stream is not drained (stop 25)",
        "jaco/model/etcd_snapshot.py",
        "        finally:\n            self._drain()",
        "        finally:\n            self._call.cancel()\n            self._channel.close()",
        k("tests/test_backup.py", "client_gone"),
    ),
    m(
        "audit chain: every event's hash is kept while the log is verified (stop 25)",
        "jaco/model/audit.py",
        "        if seq in self._wanted:",
        "        if True:",
        k("tests/unit/test_rules.py", "long_chain"),
    ),
    m(
        "drill sweep: a swept container's anonymous volume is left behind (stop 25)",
        "flows/sandbox.py",
        '["docker", "rm", "-f", "-v", container]',
        '["docker", "rm", "-f", container]',
        k("tests/test_docker.py", "own_scope"),
    ),
    m(
        "range reads: every page 1000 records, etcd counting the rest of the range each time "
        "(stop 26)",
        "jaco/model/etcd.py",
        "limit = max(1, min(MAX_PAGE, 4 * limit, int(PAGE_BYTES / per_record)))",
        "limit = limit",
        k("tests/unit/test_paged_reads.py", "byte_budget"),
    ),
    m(
        "range reads: an answer too large for the client is not asked for again smaller (stop 26)",
        "jaco/model/etcd.py",
        "                limit = max(1, limit // 4)\n                continue",
        "                raise",
        "tests/test_range_pages.py",
    ),
    m(
        "range reads: a read of the latest state is not held at its first page's revision "
        "(stop 26)",
        "jaco/model/etcd.py",
        "            revision = revision or resp.header.revision",
        "            pass",
        k("tests/unit/test_paged_reads.py", "holds_the_revision"),
    ),
    m(
        "drill: the state digest check runs under the client's default deadline (stop 26)",
        "jaco/client/history.py",
        'client.call("StateDigest", request, timeout=WHOLE_STORE_TIMEOUT)',
        'client.call("StateDigest", request)',
        k("tests/test_drill_checks.py", "own_deadline"),
    ),
    m(
        "drill: the two audit checks each verify the whole chain (stop 26)",
        "jaco/drill/checks.py",
        "        if self._reply is None:",
        "        if True:",
        k("tests/test_drill_checks.py", "own_deadline"),
    ),
    m(
        "audit chain: a chain that holds is not reported intact, anchors held or not (stop 26)",
        "jaco/model/audit.py",
        "        return replace(self._anchors_verdict(), chain_ok=True, found=found)",
        "        return replace(self._anchors_verdict(), found=found)",
        k("tests/unit/test_rules.py", "anchor"),
    ),
    m(
        "audit chain: a broken or cut chain is reported intact (stop 26)",
        "jaco/model/audit.py",
        "            return replace(broken, found=found)",
        "            return replace(broken, chain_ok=True, found=found)",
        k("tests/unit/test_rules.py", "anchor"),
    ),
    m(
        "drill report: a check's time is not measured (stop 26)",
        "jaco/drill/agent.py",
        "round(time.monotonic() - started, 3)",
        "0.0",
        k("tests/test_drill_flow.py", "real_drill_passes"),
    ),
    m(
        "Status: a deployment's message built without a field its record has (stop 26)",
        "jaco/server/convert.py",
        '_DEPLOYMENT = ("name", "image", "replicas", "created_at", "updated_at")',
        '_DEPLOYMENT = ("name", "image", "replicas", "created_at")',
        k("tests/unit/test_wire.py", "built_as_parsing"),
    ),
    m(
        "Deploy's answer and Status: the replicas of a name that sorts among the page's kept "
        "(stop 26, rewritten stop 27)",
        "jaco/model/deployments.py",
        'replicas = [r for r in map(decode, kvs) if r["deployment"] in wanted]',
        "replicas = list(map(decode, kvs))",
        k("tests/test_ipam.py", "answers_with_its_deployment or status_pages"),
    ),
    m(
        "audit chain: events with no head reported intact (stop 27)",
        "jaco/model/audit.py",
        "        if head is None and count:",
        "        if False:",
        k("tests/unit/test_rules.py", "cut_head"),
    ),
    m(
        "Status pages: past the shared range's bound, no deployment's own replicas read (stop 27)",
        "jaco/model/deployments.py",
        '[(f"{P_REPLICAS}{n}/", f"{P_REPLICAS}{n}0") for n in names],',
        "[],",
        k("tests/test_ipam.py", "not_read_through"),
    ),
    m(
        "Status pages and Deploy's answer: past the shared range's bound, no placement read "
        "(stop 27)",
        "jaco/model/deployments.py",
        '[(P_SCHEDULER + i, "") for i in ids]',
        "[]",
        k("tests/test_ipam.py", "not_read_through"),
    ),
    m(
        "range reads: a read of at most N records asks past N (stop 27)",
        "jaco/model/etcd.py",
        "            limit = min(limit, left) if left > 0 else limit",
        "            pass",
        k("tests/unit/test_paged_reads.py", "never_asks_for_more"),
    ),
    m(
        "Deploy: the IPs taken read from the wrong part of the IPAM keys (stop 27)",
        "jaco/model/deployments.py",
        "        taken = [key[len(P_IPAM) :] for key in",
        "        taken = [key[len(P_IPAM) + 1 :] for key in",
        k("tests/test_ipam.py", "concurrent_deploys"),
    ),
    m(
        "jaco status --json: a deployment's replicas left out of the streamed listing (stop 27)",
        "jaco/cli/workloads.py",
        '"placed": [{"id": r.id, "index": r.index, "ip": r.ip, "node": r.node} for r in d.placed]',
        '"placed": []',
        k("tests/unit/test_wire.py", "page_at_a_time"),
    ),
    m(
        "Status pages: replicas read now, not at the page's revision (stop 27)",
        "jaco/model/deployments.py",
        "        kvs = await self._shared_or_own(\n            view,\n            (P_REPLICAS",
        "        kvs = await self._shared_or_own(\n            View(self.etcd, 0),\n"
        "            (P_REPLICAS",
        k("tests/test_ipam.py", "status_pages"),
    ),
    m(
        "Status pages and Deploy's answer: placements not read (stop 27)",
        "jaco/model/deployments.py",
        'nodes = {p["replica"]: p["node"] for p in map(decode, kvs) if p["replica"] in ids}',
        "nodes: dict[str, str] = {}",
        k("tests/test_ipam.py", "answers_with_its_deployment or status_pages"),
    ),
    m(
        "Status pages: a later page is read now, not at the first page's revision (stop 27)",
        "jaco/model/deployments.py",
        "        view = View(self.etcd, revision or view.revision)",
        "        pass",
        k("tests/test_ipam.py", "status_pages"),
    ),
    m(
        "Status pages: a page is bounded by its count only, not by its bytes (stop 27)",
        "jaco/model/deployments.py",
        "len(page) == limit or size > PAGE_BYTES or",
        "len(page) == limit or",
        k("tests/test_range_pages.py", "status_lists"),
    ),
    m(
        "Status pages: `jaco status` shows the first page only (stop 27)",
        "jaco/client/connection.py",
        "        if not page.next_after:\n            return\n",
        "        if True:\n            return\n",
        k("tests/test_range_pages.py", "status_lists"),
    ),
    m(
        "Status pages: a revision ahead of the store is passed to etcd unchecked (stop 27)",
        "jaco/model/deployments.py",
        "        if not 0 <= revision <= view.revision:",
        "        if revision < 0:",
        k("tests/test_ipam.py", "bad_page_request"),
    ),
    m(
        "Status pages: a negative revision is passed to etcd, which reads now (stop 27)",
        "jaco/model/deployments.py",
        "        if not 0 <= revision <= view.revision:",
        "        if revision > view.revision:",
        k("tests/test_ipam.py", "bad_page_request"),
    ),
    m(
        "audit chain: the walk does not give the numbers of the types asked for (stop 26)",
        "jaco/model/audit.py",
        "if isinstance(found, str) and found in self._find and len(self.found) < MAX_FOUND:",
        "if False:",
        k("tests/unit/test_rules.py", "types_asked_for"),
    ),
    m(
        "drill: a cluster restored before, in the backup's history, fails audit history (stop 26)",
        "jaco/drill/checks.py",
        "        after = [seq for seq in chain.found_seqs if seq > history]",
        "        after = list(chain.found_seqs)",
        "tests/unit/test_drill_audit.py",
    ),
    m(
        "range reads: a page may grow past four times the one before (stop 26)",
        "jaco/model/etcd.py",
        "min(MAX_PAGE, 4 * limit, int(PAGE_BYTES / per_record))",
        "min(MAX_PAGE, int(PAGE_BYTES / per_record))",
        k("tests/unit/test_paged_reads.py", "byte_budget"),
    ),
    m(
        "drill: a failed audit verification is asked for again by the second check (stop 26)",
        "jaco/drill/checks.py",
        "        if self._failed is not None:\n            raise self._failed\n",
        "",
        "tests/unit/test_drill_audit.py",
    ),
    m(
        "flows: importing them leaves glibc's arena per thread (stop 28)",
        "flows/__init__.py",
        "\ncap_malloc_arenas()\n",
        "\n",
        "tests/unit/test_malloc_settings.py",
    ),
    m(
        "flows: the arena cap overrides the operator's MALLOC_ARENA_MAX (stop 28)",
        "jaco/memory.py",
        'if _chosen("MALLOC_ARENA_MAX", "glibc.malloc.arena_max") or mallopt is None:',
        "if mallopt is None:",
        "tests/unit/test_malloc_settings.py",
    ),
    m(
        "backup: the CLI gives the heap's top back after every few messages (stop 44)",
        "jaco/cli/backup.py",
        "    keep_freed_memory()  # the stream's 1 MiB messages reuse the pages of those before\n",
        "",
        k("tests/unit/test_malloc_settings.py", "backup_command"),
    ),
    m(
        "keep_freed_memory: the mmap threshold alone, glibc's trim left (stop 44)",
        "jaco/memory.py",
        '    ("MALLOC_TRIM_THRESHOLD_", "glibc.malloc.trim_threshold", _M_TRIM_THRESHOLD, '
        "TRIM_THRESHOLD),\n",
        "",
        k("tests/unit/test_malloc_settings.py", "kept_for_the_next"),
    ),
    m(
        "keep_freed_memory: more is kept, 12 MiB at a heap's top (stop 44)",
        "jaco/memory.py",
        "TRIM_THRESHOLD = 8 * 1024 * 1024",
        "TRIM_THRESHOLD = 12 * 1024 * 1024",
        k("tests/unit/test_malloc_settings.py", "past_the_threshold"),
    ),
    m(
        "keep_freed_memory: less is kept, 5 MiB at a heap's top (stop 44)",
        "jaco/memory.py",
        "TRIM_THRESHOLD = 8 * 1024 * 1024",
        "TRIM_THRESHOLD = 5 * 1024 * 1024",
        k("tests/unit/test_malloc_settings.py", "kept_for_the_next"),
    ),
    m(
        "keep_freed_memory: blocks of 2 MiB and more mapped afresh (stop 44)",
        "jaco/memory.py",
        "MMAP_THRESHOLD = 4 * 1024 * 1024",
        "MMAP_THRESHOLD = 2 * 1024 * 1024",
        k("tests/unit/test_malloc_settings.py", "kept_for_the_next"),
    ),
    m(
        "keep_freed_memory: blocks up to 32 MiB from the heap (stop 44)",
        "jaco/memory.py",
        "MMAP_THRESHOLD = 4 * 1024 * 1024",
        "MMAP_THRESHOLD = 32 * 1024 * 1024",
        k("tests/unit/test_malloc_settings.py", "past_the_threshold"),
    ),
    m(
        "malloc settings: GLIBC_TUNABLES split on commas (stop 44)",
        "jaco/memory.py",
        'os.environ.get("GLIBC_TUNABLES", "").split(":")',
        'os.environ.get("GLIBC_TUNABLES", "").split(",")',
        k("tests/unit/test_malloc_settings.py", "names_what_it_set"),
    ),
    m(
        "flows: importing them sets the thresholds again, unmeasured there (stop 44)",
        "flows/__init__.py",
        "\ncap_malloc_arenas()\n",
        "\ncap_malloc_arenas()\n__import__('jaco.memory').memory.keep_freed_memory()\n",
        k("tests/unit/test_malloc_settings.py", "leave_the_thresholds"),
    ),
    m(
        "keep_freed_memory: overrides the operator's MALLOC_*_THRESHOLD_ (stop 44)",
        "jaco/memory.py",
        "        if not _chosen(variable, tunable) and mallopt(parameter, value)",
        "        if mallopt(parameter, value)",
        k("tests/unit/test_malloc_settings.py", "operator_set"),
    ),
    m(
        "malloc settings: GLIBC_TUNABLES not read (stop 44)",
        "jaco/memory.py",
        'tunables = os.environ.get("GLIBC_TUNABLES", "").split(":")',
        "tunables: list[str] = []",
        "tests/unit/test_malloc_settings.py",
    ),
    m(
        "keep_freed_memory: an operator's one threshold leaves jaco's other unset (stop 44)",
        "jaco/memory.py",
        "    if mallopt is None:\n        return []\n    return [",
        "    if mallopt is None or any(_chosen(v, t) for v, t, _, _ in _THRESHOLDS):\n"
        "        return []\n    return [",
        k("tests/unit/test_malloc_settings.py", "operator_set"),
    ),
    Mutation(
        "etcd socket: a backup's snapshot stream over the member's TLS port (stop 44)",
        "jaco/model/etcd_snapshot.py",
        (
            (
                "        return cls(etcd.target, timeout)\n",
                "        from pathlib import Path\n"
                "        from jaco.node.config import DataDir\n"
                '        data = DataDir(Path(etcd.target.removeprefix("unix:")).parent.parent)\n'
                '        return cls(f"127.0.0.1:{data.load().etcd_client_port}", timeout, data)\n',
            ),
            (
                "    def __init__(self, target: str, timeout: float):\n",
                "    def __init__(self, target: str, timeout: float, data=None):\n",
            ),
            (
                "        self._channel = grpc.insecure_channel(target, options=options)\n",
                "        tls = (data.ca_cert, data.node_key, data.node_cert) if data else ()\n"
                "        creds = grpc.ssl_channel_credentials(*(f.read_bytes() for f in tls))\n"
                "        self._channel = (\n"
                "            grpc.secure_channel(target, creds, options=options)\n"
                "            if data\n"
                "            else grpc.insecure_channel(target, options=options)\n"
                "        )\n",
            ),
        ),
        (k("tests/test_etcd_socket.py", "snapshot_stream_takes"),),
    ),
    m(
        "native snapshot pass: spilled runs are never merged as they come (stop 28)",
        "native/src/sort.rs",
        "        while self.runs.len() >= self.fan_in {",
        "        while self.runs.len() >= usize::MAX {",
        k(SNAPSHOT, "more_runs"),
    ),
    m(
        "native snapshot pass: runs merged as they come lose their deletions (stop 28)",
        "native/src/sort.rs",
        "merge(&mut sources, |key, record| out.add(&key, record.record()))?;",
        "merge(&mut sources, |key, record| match record {\n"
        "                Owned::Deleted => Ok(()),\n"
        "                record => out.add(&key, record.record()),\n"
        "            })?;",
        k(SNAPSHOT, "more_runs"),
    ),
    m(
        "native snapshot pass: a merge of runs as they come keeps the oldest record (stop 28)",
        "native/src/sort.rs",
        "readers(self.runs.drain(group..), self.run_bytes)",
        "readers(self.runs.drain(group..).rev(), self.run_bytes)",
        k(SNAPSHOT, "more_runs"),
    ),
    m(
        "native snapshot pass: runs merged as they come ignore the files the process may open "
        "(stop 29)",
        "native/src/sort.rs",
        "    (soft / 2).clamp(16, 512) as usize",
        "    let _ = soft;\n    512",
        k(SNAPSHOT, "more_runs"),
    ),
    m(
        "native snapshot pass: a page visited before is not marked, a loop is walked (stop 29)",
        "native/src/bolt.rs",
        "        self.0[word] |= bit;\n",
        "",
        k(SNAPSHOT, "loops_or"),
    ),
    m(
        "native snapshot pass: a page past the file's end is looked up among the visited (stop 29)",
        "native/src/bolt.rs",
        "            Some(offset) if offset <= self.size.saturating_sub(self.page_size) => offset,",
        "            Some(offset) => offset,",
        k(SNAPSHOT, "loops_or"),
    ),
    m(
        "snapshot pass: runs of 64 MiB, the pass's memory grows with the store to 10⁶ keys "
        "(stop 29)",
        "jaco/archive/snapshot_file.py",
        "RUN_BYTES = 16 * 1024 * 1024",
        "RUN_BYTES = 64 * 1024 * 1024",
        "tests/test_snapshot_memory.py",
    ),
    m(
        "range reads: a page's part of the range is never narrowed (stop 28)",
        "jaco/model/etcd.py",
        "                if resp.count > PART_PAGES * len(resp.kvs):",
        "                if False:",
        k("tests/unit/test_paged_reads.py", "count_about"),
    ),
    m(
        "range reads: a part of the range is never widened again (stop 28)",
        "jaco/model/etcd.py",
        "                if depth and resp.count * PART_PAGES < limit:",
        "                if False:",
        k("tests/unit/test_paged_reads.py", "count_about"),
    ),
    m(
        "drill sandbox: bwrap's tmpfs uncapped, half the host's memory (stop 30)",
        "flows/sandbox.py",
        '"--size", size, "--tmpfs", "/var/lib/jaco"',
        '"--tmpfs", "/var/lib/jaco"',
        k("tests/test_drill_flow.py", "bigger_than"),
    ),
    m(
        "drill sandbox: the container's data tmpfs uncapped (stop 30)",
        "flows/sandbox.py",
        "uid=10001,gid=10001,size={size}",
        "uid=10001,gid=10001",
        k("tests/test_docker.py", "bigger_than"),
    ),
    m(
        "drill sandbox: a point in time's backup is decrypted into a /tmp too small for it "
        "(stop 30)",
        "jaco/drill/agent.py",
        "                    if self.backup_bytes:  # what it decrypts to is a little smaller",
        "                    if False:",
        k(PITR, "needs_room_in_tmp"),
    ),
    m(
        "drill sandbox: a bwrap without --size is taken, its tmpfs uncapped (stop 30)",
        "flows/sandbox_limits.py",
        '        if "--size" in done.stdout + done.stderr:',
        "        if True:",
        k("tests/unit/test_sandbox_size.py", "cannot_cap"),
    ),
    m(
        "drill sandbox: a setuid bwrap is taken, which refuses --size (stop 30)",
        "flows/sandbox_limits.py",
        "    if os.stat(bwrap).st_mode & stat.S_ISUID:",
        "    if False:",
        k("tests/unit/test_sandbox_size.py", "setuid"),
    ),
    m(
        "drill flow: a tmpfs cap that is not a size is found only after the download (stop 30)",
        "flows/drill_flow.py",
        "        tmpfs_bytes()  # a JACO_DRILL_TMPFS that is not a size fails before any download",
        "        pass",
        k("tests/test_drill_flow.py", "not_a_size"),
    ),
    m(
        "hashing threads: an encryption that fails leaves its hashing thread waiting (stop 30)",
        "jaco/archive/age.py",
        "        stack.callback(reader.close)\n",
        "",
        "tests/unit/test_hash_threads.py",
    ),
    m(
        "hashing threads: the digest is taken before the last blocks are hashed (stop 30)",
        "jaco/streams.py",
        "        self.close()\n        self._raise_failure()\n        return self._sha.hexdigest()",
        "        self._raise_failure()\n        return self._sha.hexdigest()",
        "tests/unit/test_hash_threads.py",
    ),
    m(
        "drill: a restore is reported though the backup is not the one recorded (stop 31)",
        "jaco/drill/agent.py",
        "        if not recorded[0]:\n"
        "            self.meta = None  # what was restored is not the backup recorded: "
        "nothing of it\n"
        "            return False\n",
        "",
        k(DRILL, "another_plaintext"),
    ),
    m(
        "restore of a .tar.gz.age: a damaged ciphertext is reported as a corrupt archive (stop 31)",
        "jaco/archive/encrypted.py",
        "        if code and (broken is None or code != EXIT_READER_LEFT):",
        "        if broken is None and code:",
        k(ENCRYPTED, "flipped or cut"),
        "tests/unit/test_decrypter.py",
    ),
    m(
        "decrypter: the age identity handed over in its argument list (stop 31)",
        "jaco/archive/encrypted.py",
        '"jaco.archive.decrypter", str(keys_read)]',
        '"jaco.archive.decrypter", str(keys_read), *map(str, identities)]',
        "tests/unit/test_decrypter.py",
    ),
    m(
        "decrypter: the plaintext's hash taken before its end is read (stop 31)",
        "jaco/archive/encrypted.py",
        "            yield cast(IO[bytes], plain), found\n            plain.finish()\n",
        "            yield cast(IO[bytes], plain), found\n",
        "tests/unit/test_decrypter.py",
        k(DRILL, "another_plaintext"),
    ),
    m(
        "restore: etcd's SHA-256 at the snapshot's end not checked, etcd told to skip it (stop 32)",
        "jaco/archive/format.py",
        "            if problem := sha256.trailer_problem():\n"
        '                raise ArchiveError(f"snapshot.bin {problem}")\n',
        "",
        k(RESTORE, "etcd"),
    ),
    m(
        "restore: a snapshot without etcd's SHA-256 let through (stop 32)",
        "jaco/archive/format.py",
        "        return self._body >= 0 and self._size % 512 == ETCD_TRAILER",
        "        return self._body >= 0",
        k(RESTORE, "etcd"),
        "tests/unit/test_etcd_trailer.py",
    ),
    m(
        "backup: a snapshot whose etcd SHA-256 does not match is written (stop 32)",
        "jaco/archive/format.py",
        "                    if problem := sha256.trailer_problem():\n"
        '                        raise ArchiveError(f"the snapshot the server sent {problem}")\n',
        "",
        "tests/test_backup_stream.py",
    ),
    m(
        "backup: the archive not synced while jacod reads the meta (stop 33)",
        "jaco/archive/format.py",
        "                with syncing(raw):",
        "                if True:",
        k("tests/test_backup_stream.py", "goes_to_disk"),
    ),
    m(
        "backup: the snapshot's last block asks for the message after it (stop 33)",
        "jaco/archive/format.py",
        "HashingReader(Bounded(chunks, snapshot_size), sha256=sha256)",
        "HashingReader(chunks, sha256=sha256)",
        k("tests/test_backup_stream.py", "goes_to_disk"),
    ),
    m(
        "backup: the early fsync's failure dropped (stop 33)",
        "jaco/files.py",
        "    if failed:\n        raise failed[0]\n",
        "",
        k("tests/test_backup_stream.py", "early_fsync"),
    ),
    m(
        "etcd's SHA-256: the digest of the rest taken one block late (stop 32)",
        "jaco/archive/format.py",
        "            self._sha.update(view[:cut])\n"
        "            self._body_sha = self._sha.digest()\n"
        "            self._sha.update(view[cut:])\n",
        "            self._sha.update(view)\n            self._body_sha = self._sha.digest()\n",
        "tests/unit/test_etcd_trailer.py",
    ),
    m(
        "archive gzip: a block left out of the CRC-32 (stop 32)",
        "jaco/archive/deflate.py",
        "                self._crc = isal_zlib.crc32(block, self._crc)\n",
        "",
        "tests/unit/test_deflate.py",
    ),
    m(
        "archive gzip: what does not deflate is deflated anyway (stop 32)",
        "jaco/archive/deflate.py",
        "    return None if len(packed) > len(data) - len(data) // SHRINK else packed",
        "    return packed",
        "tests/unit/test_deflate.py",
    ),
    m(
        "archive gzip: after a stored block, the samples not used (stop 33)",
        "jaco/archive/deflate.py",
        "                parts = deflated(block, previous, sample=sample)",
        "                parts = deflated(block, previous, sample=False)",
        "tests/unit/test_deflate.py",
    ),
    m(
        "archive gzip: a block stored whatever its samples say (stop 33)",
        "jaco/archive/deflate.py",
        "        if _shrinks(samples, previous) is None:",
        "        if True:",
        "tests/unit/test_deflate.py",
    ),
    m(
        "verify: the object not held to its checksum, decrypted or not (stop 33)",
        "flows/tasks.py",
        "    check_ciphertext(key, backup.sha256, backup.metadata, encrypted.ciphertext_sha256)\n",
        "",
        k(VERIFY, "damaged_in_the_store"),
    ),
    m(
        "verify: the stored object's size not held to the upload's (stop 33)",
        "flows/tasks.py",
        "        if backup.size != encrypted.size:",
        "        if False:",
        k(VERIFY, "damaged_in_the_store"),
    ),
    m(
        "verify: an object without its checksum in its metadata read anyway (stop 33)",
        "flows/tasks.py",
        '        if "ciphertext-sha256" not in backup.metadata:',
        "        if False:",
        k(VERIFY, "damaged_in_the_store"),
    ),
    m(
        "verify: a download cut midway taken for a damaged object (stop 33)",
        "flows/tasks.py",
        "        if backup.error is not None:  # the store failed: that explains the rest\n"
        "            raise backup.error from None\n",
        "",
        k("tests/test_pipeline.py", "cutting_every_reply"),
    ),
    m(
        "S3 download: a cut read not resumed (stop 33)",
        "flows/download.py",
        "RESUMES = 4 ",
        "RESUMES = 0 ",
        k("tests/test_pipeline.py", "cut_mid_verify"),
        k(DRILL_FLOW, "cut_midway"),
        "tests/unit/test_download.py",
    ),
    m(
        "drill: a record without the plaintext's SHA-256 passes the first check (stop 33)",
        "jaco/drill/agent.py",
        "        if not self.expect.plaintext_sha256:",
        "        if False:",
        "tests/unit/test_drill_input.py",
    ),
    m(
        "drill: the streamed object's SHA-256 not held to the record by the flow (stop 32)",
        "flows/drill_flow.py",
        "    check_ciphertext(record.key, backup.sha256, backup.metadata, "
        "record.ciphertext_sha256)\n",
        "",
        k(DRILL_FLOW, "corrupted"),
    ),
    m(
        "drill: an object whose metadata names another cluster is drilled (stop 32)",
        "flows/drill_flow.py",
        '    if metadata.get("cluster-id") != record.cluster_id:',
        "    if False:",
        k(DRILL_FLOW, "metadata"),
    ),
    m(
        "drill: an object not the size recorded is fed to a sandbox (stop 32)",
        "flows/drill_flow.py",
        "    if backup.size != record.size:",
        "    if False:",
        k(DRILL_FLOW, "cut"),
    ),
    m(
        "drill: a download cut midway is taken for the whole object (stop 32)",
        "flows/drill_flow.py",
        "    if backup.error is not None:\n        raise backup.error  # the store failed midway",
        "    if False:\n        raise backup.error  # the store failed midway",
        k(DRILL_FLOW, "cutting_every_reply"),
        "tests/unit/test_download.py",
    ),
    m(
        "verify: a backup the store kept from being checked deleted as damaged (stop 34)",
        "flows/backup_flow.py",
        "            except DAMAGE as exc:",
        "            except Exception as exc:",
        k("tests/test_pipeline.py", "cutting_every_reply"),
    ),
    m(
        "verify: a backup shown damaged kept (stop 34)",
        "flows/backup_flow.py",
        "DAMAGE = (VerifyFailed, DecryptionFailed, ArchiveError)",
        "DAMAGE = (VerifyFailed, ArchiveError)",
        k(VERIFY, "does_not_decrypt"),
    ),
    m(
        "verify identity: one that is none of the recipients not refused before the backup "
        "(stop 35)",
        "flows/backup_flow.py",
        "    check_verify_identity(params)\n",
        "",
        k("tests/test_pipeline.py", "wrong_verify_identity"),
    ),
    m(
        "verify: a decrypter that died raised before the object is held to its checksum (stop 34)",
        "flows/tasks.py",
        "        except JacoError as exc:  # a bad key or archive, or a decrypter that died",
        "        except VerifyFailed as exc:",
        k(VERIFY, "dying"),
    ),
    m(
        "verify: a backup whose archive is broken kept (stop 34)",
        "flows/backup_flow.py",
        "DAMAGE = (VerifyFailed, DecryptionFailed, ArchiveError)",
        "DAMAGE = (VerifyFailed, DecryptionFailed)",
        k(VERIFY, "archive_is_broken"),
    ),
    m(
        "S3 download: a cut read resumed from whatever the key now holds (stop 34)",
        "flows/storage.py",
        'Range=rest, IfMatch=reply["ETag"]',
        "Range=rest",
        k("tests/test_pipeline.py", "same_object"),
    ),
    m(
        "backup: jacod's receiving thread not lowered in priority (stop 34)",
        "jaco/server/snapshot.py",
        "        assert self._stream is not None\n        _yield_cpu()\n",
        "        assert self._stream is not None\n",
        k("tests/test_backup.py", "etcd_stalls"),
    ),
    m(
        "retention: the newest verified backup pushed out by newer unverified ones (stop 34)",
        "flows/tasks.py",
        "        keep |= {verified.key} if verified else set()\n",
        "",
        k("tests/test_retention.py", "newest_verified"),
    ),
    m(
        "retention: every drill record read, so a damaged one stops prune (stop 34)",
        "flows/tasks.py",
        "    records = catalog.records(damaged)  # a GET each: which backups verify proved",
        "    records = catalog.backups()",
        k("tests/test_retention.py", "newest_verified"),
    ),
    m(
        "verify identity: one that cannot be read refuses the backup (stop 35)",
        "flows/backup_flow.py",
        "    except JacoError:\n        return\n",
        "    except JacoError:\n        raise\n",
        k("tests/test_pipeline.py", "unreadable_verify_identity"),
    ),
    m(
        "retention: the newest verified backup protected though gone from the store (stop 35)",
        "flows/tasks.py",
        "        verified = newest_verified_in(records, {b.key for b in backups}.__contains__)[0]",
        "        verified = newest_verified_in(records)[0]",
        k("tests/test_retention.py", "still_stored"),
    ),
    m(
        "watchdog: a verified backup gone from the store counted as fresh (stop 35)",
        "flows/watchdog_flow.py",
        "    newest, gone = newest_verified_in(view.backups, store.exists)",
        "    newest, gone = newest_verified_in(view.backups)",
        k("tests/test_watchdog.py", "gone_from_the_store"),
    ),
    m(
        "watchdog: one unreadable catalog stops the watch of every cluster (stop 35)",
        "flows/watchdog_flow.py",
        "    except Exception as exc:  # noqa: BLE001 - reported by the caller",
        "    except ValueError as exc:  # noqa: BLE001 - reported by the caller",
        k("tests/test_watchdog.py", "unreadable_catalog"),
    ),
    m(
        "metrics: a verified backup gone from the store reported as the newest (stop 35)",
        "flows/metrics.py",
        "newest = newest_verified_in(view.backups, catalog.store.exists)[0]",
        "newest = newest_verified_in(view.backups)[0]",
        k("tests/test_watchdog.py", "gone_from_the_store"),
    ),
    m(
        "S3: a missing object taken for a stored one (stop 35)",
        "flows/storage.py",
        '            if "NoSuchKey" in error.message or " 404" in error.message:\n'
        "                return False",
        '            if "NoSuchKey" in error.message or " 404" in error.message:\n'
        "                return True",
        k("tests/test_watchdog.py", "gone_from_the_store"),
    ),
    m(
        "change stream: segments chained onto an unverified backup (stop 34)",
        "flows/stream.py",
        "        return self.catalogs[0].newest_verified(self.catalogs[0].store.exists)",
        "        return next(iter(self.catalogs[0].backups()), None)",
        "tests/unit/test_stream_base.py",
    ),
    m(
        "change stream: segments chained onto a verified backup gone from the store (stop 35)",
        "flows/stream.py",
        "        return self.catalogs[0].newest_verified(self.catalogs[0].store.exists)",
        "        return self.catalogs[0].newest_verified()",
        "tests/unit/test_stream_base.py",
    ),
    m(
        "catalog: the restorable window reaching an unverified backup (stop 34)",
        "flows/catalog.py",
        "window=self.window([b for b in backups if b.verified])",
        "window=self.window(backups)",
        "tests/unit/test_stream_base.py",
    ),
    m(
        "change stream: a failed full backup ends the process (systemd restarts it) (stop 36)",
        "flows/stream.py",
        '                log.error("%s; the next attempt in %.0fs", first, wait, '
        "exc_info=not ours)\n",
        "                raise\n",
        "tests/test_stream_start.py",
    ),
    m(
        "change stream: a failing full backup retried at a fixed pace (stop 36)",
        "flows/stream.py",
        "                wait = min(wait * 2, self.settings.full_backup_retry_max_seconds)",
        "                wait = min(wait, self.settings.full_backup_retry_max_seconds)",
        "tests/test_stream_start.py",
    ),
    m(
        "retention: a period's slot taken by a newer unverified backup (stop 36)",
        "flows/retention.py",
        "            elif backup.key in verified and chosen[bucket] not in verified:\n"
        "                chosen[bucket] = backup.key\n",
        "",
        k("tests/test_retention.py", "newest_verified_backup_not"),
    ),
    m(
        "retention: the backup flow's prune not told which backups are verified (stop 36)",
        "flows/tasks.py",
        "    keep = to_keep(backups, policy, {r.key for r in records if r.verified})",
        "    keep = to_keep(backups, policy)",
        k("tests/test_retention.py", "newest_verified_backup_not"),
    ),
    m(
        "change stream: a full backup that cannot start (Prefect out of reach) ends the process "
        "(stop 36)",
        "flows/stream.py",
        "            except Exception as exc:  # noqa: BLE001 - any cause: logged, retried",
        "            except JacoError as exc:",
        k("tests/test_stream_start.py", "out_of_reach"),
    ),
    m(
        "change stream: a failed run's verified backup not taken as the base (stop 36)",
        "flows/stream.py",
        "                if newest is not None and newest.snapshot_index > newer_than:",
        "                if False:",
        k("tests/test_stream_start.py", "is_the_base"),
    ),
    m(
        "change stream: the base etcd compacted past taken again after a failed run (stop 36)",
        "flows/stream.py",
        "                if newest is not None and newest.snapshot_index > newer_than:",
        "                if newest is not None:",
        "tests/unit/test_stream_retry.py",
    ),
    m(
        "change stream: a newer base gone when looked for ends the process (stop 36)",
        "flows/stream.py",
        "                    newer = self._full_backup_until_stopped("
        '"the newer full backup is gone")',
        "                    pass",
        k("tests/unit/test_stream_retry.py", "newer_base_gone"),
    ),
    m(
        "change stream: a damaged backup record stops the stream from finding its base (stop 36)",
        "flows/catalog.py",
        "        records = self.records(damaged)\n        for key in damaged:",
        "        records = self.records()\n        for key in damaged:",
        "tests/unit/test_stream_base.py",
    ),
    m(
        "retention: a damaged backup record fails prune (stop 36)",
        "flows/tasks.py",
        "    records = catalog.records(damaged)  # a GET each: which backups verify proved",
        "    records = catalog.records()",
        k("tests/test_retention.py", "damaged_backup_record"),
    ),
    m(
        "retention: the backup of a damaged record not kept (stop 36)",
        "flows/tasks.py",
        "    keep |= {b.key for b in backups if catalog.record_key(b.key) in damaged}  # verified?",
        "",
        k("tests/test_retention.py", "damaged_backup_record"),
    ),
    m(
        "report: damaged catalog records left out of the backup run's report (stop 36)",
        "flows/reports.py",
        '        if p.get("damaged_records"):  # its backup kept: whether it was verified is '
        "unknown",
        "        if False:",
        k("tests/test_retention.py", "damaged_backup_record"),
    ),
    m(
        "backup ls: a record taken for a stored backup (stop 36)",
        "jaco/cli/catalog.py",
        "    stored = {o.key for f in sorted(folders) for o in catalog.store.list(f) "
        "if o.key in keys}",
        "    stored = keys",
        "tests/unit/test_backup_ls.py",
    ),
    m(
        "backup ls: the restorable window resting on a backup gone from the store (stop 36)",
        "jaco/cli/catalog.py",
        '        view = view.model_copy(update={"window": catalog.window(bases)})',
        "        pass",
        "tests/unit/test_backup_ls.py",
    ),
    m(
        "catalog reads: every record fetched again on every scrape (stop 37)",
        "flows/catalog.py",
        "            if tag != obj.tag or raw is None:  # never kept untagged: below",
        "            if True:",
        k("tests/test_catalog_reads.py", "second_scrape"),
    ),
    m(
        "catalog reads: a record served from memory though its tag changed (stop 37)",
        "flows/catalog.py",
        "            if tag != obj.tag or raw is None:  # never kept untagged: below",
        "            if raw is None:",
        k("tests/test_catalog_reads.py", "rewritten_or_removed"),
    ),
    m(
        "catalog reads: a directory store's tag blind to a record replaced (stop 37)",
        "flows/storage.py",
        "                yield StoredObject(key, stat.st_size, modified)",
        "                yield StoredObject(key, stat.st_size, modified, str(stat.st_size))",
        k("tests/test_catalog_reads.py", "rewritten_or_removed"),
    ),
    m(
        "catalog view: its listing kept once the view is read (stop 37)",
        "flows/catalog.py",
        "        finally:\n            self._listing = None\n",
        "        finally:\n            pass\n",
        k("tests/test_catalog_reads.py", "rewritten_or_removed"),
    ),
    m(
        "catalog reads: the records kept not bounded (stop 37)",
        "flows/catalog.py",
        "            while len(_SEEN) > READ_PREFIXES:",
        "            while len(_SEEN) > READ_PREFIXES * 100:",
        k("tests/test_catalog_reads.py", "bounded_by_prefix"),
    ),
    m(
        "catalog reads: a removed record's cached copy kept (stop 37)",
        "flows/catalog.py",
        "            _SEEN[scope] = kept\n",
        "            _SEEN[scope] = {**seen, **kept}\n",
        k("tests/test_catalog_reads.py", "rewritten_or_removed"),
    ),
    m(
        "metrics: a store whose read failed kept for the next scrape (stop 37)",
        "flows/metrics.py",
        "                self._stores.pop(where, None)",
        "                pass",
        k("tests/test_catalog_reads.py", "rotated"),
    ),
    m(
        "catalog view: each part of the catalog listed on its own (stop 37)",
        "flows/catalog.py",
        "        if self._listing is None:\n            return list(self.store.list(",
        "        if True:\n            return list(self.store.list(",
        k("tests/test_catalog_reads.py", "second_scrape"),
    ),
    m(
        "catalog view: identity.json and stream.json fetched on every view (stop 37)",
        "flows/catalog.py",
        "        if self._listing is None:\n            return self._read(self.root + name, model)",
        "        if True:\n            return self._read(self.root + name, model)",
        k("tests/test_catalog_reads.py", "second_scrape"),
    ),
    m(
        "metrics: the catalogs first read by the first scrape, not at the start (stop 37)",
        "flows/metrics.py",
        '        target=_collect_once, args=(collector,), name="metrics-warm", daemon=True\n'
        "    ).start()",
        '        target=lambda: None, name="metrics-warm", daemon=True\n    ).start()',
        k("tests/test_catalog_reads.py", "before_its_first_scrape"),
    ),
    m(
        "metrics: a scrape during a read of the same cluster reads it again (stop 37)",
        "flows/metrics.py",
        "        with reading:\n            return self._read_view(target)\n",
        "        return self._read_view(target)\n",
        k("tests/test_catalog_reads.py", "during_the_first_reads"),
    ),
    m(
        "S3 stores: each session loading S3's model again (stop 37)",
        "flows/s3client.py",
        "        profile_name=settings.profile, botocore_session=_botocore_session(), **keys",
        "        profile_name=settings.profile, **keys",
        "tests/unit/test_store_memory.py",
    ),
    m(
        "watchdog: the clusters' catalogs read one after the other (stop 37)",
        "flows/watchdog_flow.py",
        "    with ThreadPoolExecutor(READ_THREADS, ",
        "    with ThreadPoolExecutor(1, ",
        k("tests/test_catalog_reads.py", "side_by_side"),
    ),
    m(
        "metrics: the clusters' catalogs read one after the other (stop 37)",
        "flows/metrics.py",
        "        with ThreadPoolExecutor(SCRAPE_THREADS, ",
        "        with ThreadPoolExecutor(1, ",
        k("tests/test_catalog_reads.py", "scrape_reads_the_clusters"),
    ),
    m(
        "metrics: every cluster read through the first cluster's store (stop 37)",
        "flows/metrics.py",
        '        where = f"{target.s3_url} {target.s3.model_dump_json()}"',
        '        where = ""',
        k("tests/test_catalog_reads.py", "two_buckets"),
    ),
    m(
        "metrics: one cluster's damaged record remakes the store it shares (stop 37)",
        "flows/metrics.py",
        "            if isinstance(exc, StorageError):",
        "            if True:",
        k("tests/test_catalog_reads.py", "does_not_remake"),
    ),
    m(
        "catalog reads: a directory store's records kept though never used (stop 37)",
        "flows/catalog.py",
        "            if obj.tag:  # untagged",
        "            if True:  # untagged",
        k("tests/test_catalog_reads.py", "rewritten_or_removed"),
    ),
    m(
        "S3 stores: the shared loader's search path grown by every store (stop 37)",
        "flows/s3client.py",
        "        paths[:] = list(dict.fromkeys(paths))",
        "        pass",
        "tests/unit/test_store_memory.py",
    ),
    m(
        "S3 stores: the shared loader made by a session that reads AWS_PROFILE (stop 37)",
        "flows/s3client.py",
        "    return botocore.loaders.create_loader()",
        "    return __import__('botocore.session').session.get_session()"
        ".get_component('data_loader')",
        "tests/unit/test_store_memory.py",
    ),
    m(
        "catalog failures: the oldest shown, not the newest (stop 37)",
        "flows/catalog.py",
        "        newest = self._failures_listed()[-limit:][::-1]",
        "        newest = self._failures_listed()[:limit]",
        k("tests/test_catalog_reads.py", "newest_first"),
    ),
    m(
        "catalog window: a chain's first segment taken for its newest (stop 37)",
        "flows/catalog.py",
        " (base not in chains or obj.key > chains[base].key)",
        " (base not in chains or obj.key < chains[base].key)",
        k("tests/test_catalog_reads.py", "second_scrape"),
    ),
    m(
        "jacod's start: its member asked on the client's channel, in reconnect backoff (stop 38)",
        "jaco/node/etcd_member.py",
        "            await probe.status(timeout=2)",
        "            await (self.client or probe).status(timeout=2)",
        "tests/test_etcd_start.py",
    ),
    m(
        "jacod's start: the API's modules loaded before etcd is spawned (stop 38)",
        "jaco/server/daemon.py",
        "    member = EtcdMember(data, config)\n    await member.spawn()\n",
        "    import jaco.server.api  # noqa: F401\n\n"
        "    member = EtcdMember(data, config)\n    await member.spawn()\n",
        k("tests/test_etcd_start.py", "spawned_before"),
    ),
    m(
        "jacod's start: the etcd client's gRPC loaded with the member's module (stop 38)",
        "jaco/node/etcd_member.py",
        "if TYPE_CHECKING:\n    from jaco.model.etcd import Etcd\n",
        "if True:\n    from jaco.model.etcd import Etcd\n",
        k("tests/test_etcd_start.py", "spawned_before"),
    ),
    m(
        "jacod's start: start() polls on the client's channel, not answers() (stop 38)",
        "jaco/node/etcd_member.py",
        "            self.asks += 1\n            if await self.answers():\n",
        "            self.asks += 1\n            try:\n"
        "                await self.client.status(timeout=2)\n                answered = True\n"
        "            except Unavailable:\n"
        "                answered = False\n            if answered:\n",
        k("tests/test_etcd_start.py", "after_a_failed_one"),
    ),
    m(
        "jacod's start: its etcd not stopped when jacod fails before serving (stop 38)",
        "jaco/server/daemon.py",
        "        await member.stop()  # stopped already unless",
        "        pass  # stopped already unless",
        k("tests/test_etcd_start.py", "cannot_listen"),
    ),
    m(
        "watchdog: a cluster's store opened outside the guard, failing every cluster (stop 38)",
        "flows/watchdog_flow.py",
        "    try:\n        catalog = Catalog(open_store(target.s3_url, target.s3), target.prefix, "
        "target.cluster)\n",
        "    catalog = Catalog(open_store(target.s3_url, target.s3), target.prefix, "
        "target.cluster)\n    try:\n",
        k("tests/test_watchdog.py", "store_cannot_be_opened"),
    ),
    m(
        "Prefect variables: written through Prefect's client, 2 s pause on a 503 (stop 39)",
        "flows/api_writes.py",
        "            reply = httpx.Client.send(http, request)",
        "            reply = http.send(request)",
        "tests/test_api_writes.py",
    ),
    m(
        "backup lock: its holder deleted through Prefect's Variable.unset on release (stop 39)",
        "flows/locking.py",
        "            unset_variable(variable)",
        "            __import__('prefect.variables').variables.Variable.unset(variable)",
        k("tests/test_api_writes.py", "lock_is_taken"),
    ),
    m(
        "backup lock: its holder written through Prefect's Variable.set (stop 39)",
        "flows/locking.py",
        "                    set_variable(variable, json.dumps(me))",
        "                    __import__('prefect.variables').variables.Variable.set(\n"
        "                        variable, json.dumps(me), overwrite=True\n                    )",
        k("tests/test_api_writes.py", "lock_is_taken"),
    ),
    m(
        "backup lock: a silent holder's variable deleted through Prefect's API (stop 39)",
        "flows/locking.py",
        "    unset_variable(_variable(name))",
        "    Variable.unset(_variable(name))",
        k("tests/test_api_writes.py", "went_silent"),
    ),
    m(
        "backup counter: written through Prefect's Variable.set (stop 39)",
        "flows/backup_flow.py",
        "    set_variable(name, count)",
        "    Variable.set(name, count, overwrite=True)",
        k("tests/test_api_writes.py", "backup_counter"),
    ),
    m(
        "Prefect variables: a variable that is not there yet is not created (stop 39)",
        "flows/api_writes.py",
        "        if reply.status_code == 404:  # not there yet",
        "        if False:  # not there yet",
        k("tests/test_api_writes.py", "busy_update"),
    ),
    m(
        "Prefect variables: a server that stays busy is asked forever (stop 39)",
        "flows/api_writes.py",
        "            if late or reply.status_code not in AGAIN:",
        "            if reply.status_code not in AGAIN:",
        k("tests/test_api_writes.py", "stays_busy"),
    ),
    m(
        "Prefect variables: a broken connection is not asked again (stop 39)",
        "flows/api_writes.py",
        "            if late or isinstance(exc, httpx.ConnectError):",
        "            if True:",
        k("tests/test_api_writes.py", "broken_connection"),
    ),
    m(
        "backup lock: its slot taken through Prefect's client, 2 s pause on a 503 (stop 39)",
        "flows/locking.py",
        '        reply = api_write("POST", "/v2/concurrency_limits/increment-with-lease", take)',
        "        reply = __import__('prefect').get_client(sync_client=True).__enter__()"
        '._client.post("/v2/concurrency_limits/increment-with-lease", json=take)',
        k("tests/test_api_writes.py", "lock_is_taken"),
    ),
    m(
        "backup lock: its slot not given back on release (stop 39)",
        "flows/locking.py",
        '            api_write("POST", "/v2/concurrency_limits/decrement-with-lease", '
        '{"lease_id": lease})',
        "            pass",
        k("tests/test_api_writes.py", "lock_is_taken"),
    ),
    m(
        "backup lock: any refusal but success waited for, not only 423 (stop 39)",
        "flows/locking.py",
        "        if reply.status_code != 423:  # 423 Locked: someone holds it",
        "        if reply.is_success:  # 423 Locked: someone holds it",
        k("tests/test_api_writes.py", "refuses"),
    ),
    m(
        "backup lock: its slot taken for a day, not LEASE_SECONDS (stop 39)",
        "flows/locking.py",
        '"mode": "concurrency", "lease_duration": LEASE_SECONDS',
        '"mode": "concurrency", "lease_duration": 86400',
        k("tests/test_api_writes.py", "lock_is_taken"),
    ),
    m(
        "backup lock: a silent holder's slot freed through Prefect's client (stop 39)",
        "flows/locking.py",
        '    api_write("PATCH", f"/v2/concurrency_limits/{name}", {"active_slots": 0})'
        ".raise_for_status()",
        "    __import__('prefect').get_client(sync_client=True).__enter__()._client.patch(\n"
        '        f"/v2/concurrency_limits/{name}", json={"active_slots": 0}\n    )',
        k("tests/test_api_writes.py", "went_silent"),
    ),
    m(
        "Prefect variables: Prefect's attribution headers left out (stop 39)",
        "flows/api_writes.py",
        "        http._add_attribution_headers(request)  # what Prefect's send adds first",
        "        pass",
        k("tests/test_api_writes.py", "headers"),
    ),
    m(
        "restore in place: the snapshot's consistent_index left as etcd's tool would not (stop 40)",
        "jaco/node/seeded_restore.py",
        "    os.pwrite(snapshot, index, at)",
        "    pass",
        k("tests/test_restore_seeded.py", "etcds_restore_makes or applies_writes"),
    ),
    m(
        "restore in place: etcd's SHA-256 trailer left at the end of the store (stop 40)",
        "jaco/node/seeded_restore.py",
        "        os.ftruncate(snapshot, size - ETCD_TRAILER)",
        "        pass",
        k("tests/test_restore_seeded.py", "etcds_restore_makes"),
    ),
    m(
        "restore in place: etcdctl taken for the restore tool though etcdutl is there (stop 40)",
        "jaco/node/etcd_member.py",
        '    return shutil.which("etcdutl") or etcd_binary("etcdctl")',
        '    return etcd_binary("etcdctl")',
        k("tests/test_restore_seeded.py", "etcdutl_beside"),
    ),
    m(
        "restore in place: any etcdctl version taken for 3.4 (stop 40)",
        "jaco/node/seeded_restore.py",
        "    return TOOL_34.search(said.stdout) is not None",
        "    return True",
        k("tests/test_restore_seeded.py", "another_restore_tool"),
    ),
    m(
        "restore in place: the snapshot copied into place, not linked (stop 40)",
        "jaco/node/seeded_restore.py",
        "        os.link(str(snapshot), staged, src_dir_fd=fds, follow_symlinks=True)",
        '        os.link(f"/proc/self/fd/{snapshot}", staged, follow_symlinks=True)',
        k("tests/test_restore_seeded.py", "etcds_restore_makes"),
    ),
    m(
        "restore in place: a snapshot that cannot be linked is not copied (stop 40)",
        "jaco/node/seeded_restore.py",
        "            _copy(snapshot, staged)",
        "            staged.touch(0o600)",
        k("tests/test_restore_seeded.py", "cannot_be_linked"),
    ),
    m(
        "restore in place: the copied store readable by others (stop 40)",
        "jaco/node/seeded_restore.py",
        "    with create_private(to) as out:",
        '    with open(to, "xb") as out:',
        k("tests/test_restore_seeded.py", "cannot_be_linked"),
    ),
    m(
        "restore: the snapshot made etcd's store without its check (stop 40)",
        "jaco/node/restore.py",
        "        checked = pool.submit(_check_snapshot, path, meta, data.path)",
        "        checked = pool.submit(read_snapshot_state, path, data.path)",
        "tests/test_restore_bad_input.py",
    ),
    m(
        "restore in place: room asked for the snapshot alone, not etcd's log (stop 40)",
        "jaco/node/restore.py",
        "        need = size + WAL_BYTES if in_place else 2 * size",
        "        need = size",
        "tests/test_restore_atomic.py",
    ),
    m(
        "restore in place: a store it cannot change in place refused, not copied by etcd (stop 40)",
        "jaco/node/seeded_restore.py",
        "        shutil.rmtree(data.etcd_dir)\n        copy_restore(snapshot, data, config)\n"
        "        return",
        "        raise",
        k("tests/test_restore_seeded.py", "cannot_change_in_place"),
    ),
    m(
        "restore in place: consistent_index taken wherever its element points (stop 40)",
        "jaco/archive/bolt.py",
        "and offset <= value_at and value_at + size <= offset + length",
        "and True",
        k("tests/test_restore_seeded.py", "outside_its_page"),
    ),
    m(
        "restore in place: the fallback's copy written without asking for room (stop 40)",
        "jaco/node/seeded_restore.py",
        "    require_space(to.parent, size, what)  # restore reserved room for one copy, not two",
        "    pass",
        k("tests/test_restore_seeded.py", "cannot_hold"),
    ),
    m(
        "restore in place: any etcdctl 3.4.x trusted, not the 3.4.23 compared (stop 40)",
        "jaco/node/seeded_restore.py",
        'TOOL_34 = re.compile(r"^etcdctl version: 3\\.4\\.23$", re.MULTILINE)',
        'TOOL_34 = re.compile(r"^etcdctl version: 3\\.4\\.[0-9]+$", re.MULTILINE)',
        k("tests/test_restore_seeded.py", "another_restore_tool"),
    ),
    m(
        "etcd's restore tool run with the environment's ETCDCTL_API (stop 40)",
        "jaco/node/etcd_member.py",
        "        env=tool_env(),",
        "        env=None,",
        k("tests/test_restore_seeded.py", "v2_api"),
    ),
    m(
        "the ciphertext fed to the decrypter through this process, never spliced (stop 41)",
        "jaco/streams.py",
        "    if isinstance(inner, io.BufferedReader):\n"
        "        if not isinstance(inner.raw, io.FileIO):",
        "    if True:\n        if True:",
        k("tests/unit/test_decrypter.py", "spliced or limit_inside"),
    ),
    m(
        "splice: what the drill's stdin holds buffered skipped (stop 41)",
        "jaco/streams.py",
        "            moved = len(first)",
        "            moved, first = len(first), b''",
        k("tests/unit/test_decrypter.py", "spliced or limit_inside"),
    ),
    m(
        "splice: the drill's stdin read past the backup's end (stop 41)",
        "jaco/streams.py",
        "            n = os.splice(fd, out, CHUNK if limit is None else min(CHUNK, limit - moved))",
        "            n = os.splice(fd, out, CHUNK)",
        k("tests/unit/test_decrypter.py", "spliced"),
    ),
    m(
        "the plaintext hashed on the thread that reads it (stop 41)",
        "jaco/archive/encrypted.py",
        "        self._sha = BlockSha256(threaded=True) if hashes else None",
        "        self._sha = BlockSha256(threaded=False) if hashes else None",
        k("tests/unit/test_hash_threads.py", "hashes_both_sides"),
    ),
    m(
        "the plaintext's hashing thread left running when the reader stops (stop 41)",
        "jaco/archive/encrypted.py",
        "            plain.close()",
        "            pass",
        k("tests/unit/test_hash_threads.py", "hashes_both_sides"),
    ),
    m(
        "splice: a refused splice (a seccomp filter, a descriptor without it) fails (stop 41)",
        "jaco/streams.py",
        "                if exc.errno in REFUSED:",
        "                if False:",
        k("tests/unit/test_decrypter.py", "splice_is_refused"),
    ),
    m(
        "splice: what a refused splice left is not copied (stop 41)",
        "jaco/archive/encrypted.py",
        "            while block := src.read(CHUNK):\n                sink.write(block)",
        "            pass",
        k("tests/unit/test_decrypter.py", "splice_is_refused"),
    ),
    m(
        "the backup's part not read to its end when the decrypter ends early and well (stop 41)",
        "jaco/archive/encrypted.py",
        "            while src.read(CHUNK):\n                pass",
        "            pass",
        k("tests/unit/test_decrypter.py", "ends_well_before_the_end"),
    ),
    m(
        "splice: a buffered reader over any raw stream with a descriptor spliced (stop 41)",
        "jaco/streams.py",
        "        if not isinstance(inner.raw, io.FileIO):  # a raw stream may change what",
        "        if False:  # a raw stream may change what",
        k("tests/unit/test_decrypter.py", "only_a_file"),
    ),
    m(
        "splice: a part with nothing left waits for a byte (stop 41)",
        "jaco/streams.py",
        "    if limit == 0:\n        return 0",
        "    pass",
        k("tests/unit/test_decrypter.py", "nothing_left"),
    ),
    m(
        "etcd socket: channels share a connection and a refused one's backoff (stop 43)",
        "jaco/model/etcd.py",
        '        ("grpc.use_local_subchannel_pool", 1),\n',
        "",
        k("tests/test_etcd_start.py", "refused_ask"),
    ),
    m(
        "etcd socket: its directory, loosened, is not made private again at start (stop 43)",
        "jaco/node/etcd_member.py",
        "    os.chmod(data.etcd_socket_dir, 0o700)\n",
        "",
        k("tests/test_etcd_socket.py", "private_again"),
    ),
    m(
        "etcd socket: the one a killed member left stays, and etcd cannot listen (stop 43)",
        "jaco/node/etcd_member.py",
        "    data.etcd_socket.unlink(missing_ok=True)\n",
        "",
        k("tests/test_etcd_socket.py", "killed_member"),
    ),
    m(
        "etcd socket: a path longer than a socket address holds is given to gRPC as is (stop 43)",
        "jaco/model/etcd.py",
        "    if len(os.fsencode(socket)) < SUN_PATH:",
        "    if True:",
        k("tests/test_etcd_socket.py", "deeper"),
    ),
    m(
        "etcd socket: made where anyone may enter, 0755 (stop 43)",
        "jaco/node/etcd_member.py",
        "    os.chmod(data.etcd_socket_dir, 0o700)\n",
        "    os.chmod(data.etcd_socket_dir, 0o755)  # noqa: S103\n",
        k("tests/test_etcd_socket.py", "other_users_out"),
    ),
    m(
        "etcd socket: a data dir given relative, which etcd reads from its own directory (stop 43)",
        "jaco/node/config.py",
        "        self.path = path.absolute()\n",
        "        self.path = path\n",
        k("tests/test_etcd_start.py", "relative"),
    ),
    m(
        "splice: a non-blocking stdin with nothing yet ends the splice, the rest cut (stop 42)",
        "jaco/streams.py",
        "                _wait_for(out, select.POLLOUT)\n                continue",
        "                break",
        k("tests/unit/test_decrypter.py", "non_blocking"),
    ),
    m(
        "write-behind: the archive's pages left to the kernel until its end (stop 42)",
        "jaco/archive/format.py",
        "GzipWriter(raw, WriteBehind(raw))",
        "GzipWriter(raw)",
        k("tests/test_backup_stream.py", "as_it_is_written"),
    ),
    m(
        "write-behind: no window's write to disk started or waited for (stop 42)",
        "jaco/files.py",
        "        self._call(self._started, end, _WRITE)\n",
        "        return\n",
        k("tests/test_write_behind.py", "two_windows"),
    ),
    m(
        "write-behind: a write error the wait took is dropped, not raised (stop 42)",
        "jaco/files.py",
        "        raise OSError(code, os.strerror(code))",
        "        return",
        k("tests/test_write_behind.py", "disk_fails"),
    ),
    m(
        "write-behind: a wait's error that reads like a refusal turns it off, dropped (stop 42)",
        "jaco/files.py",
        "        if flags == _WRITE and code in _NO_SYNC_FILE_RANGE:",
        "        if code in _NO_SYNC_FILE_RANGE:",
        k("tests/test_write_behind.py", "only_a_first_call"),
    ),
    m(
        "the drill's cpu_seconds the agent's alone, not its children's (stop 41)",
        "jaco/drill/agent.py",
        "(resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))",
        "(resource.RUSAGE_SELF,))",
        k("tests/unit/test_drill_input.py", "cpu_of_what"),
    ),
    m(
        "age_v1: the last chunk not flagged as last (stop 45)",
        "jaco/archive/age_v1.py",
        "chunk_nonce(counter, last),\n                    view[at : at + size],",
        "chunk_nonce(counter, False),\n                    view[at : at + size],",
        k("tests/unit/test_age_v1.py", "age_and_pyrage_decrypt"),
    ),
    m(
        "age_v1: every chunk under the same nonce (stop 45)",
        "jaco/archive/age_v1.py",
        "                counter += 1\n",
        "",
        k("tests/unit/test_age_v1.py", "age_and_pyrage_decrypt"),
    ),
    m(
        "age_v1: an empty last chunk after a full one (stop 45)",
        "jaco/archive/age_v1.py",
        "                last = not more and at + size == filled\n",
        "                last = not more and at + size == filled and size < CHUNK\n",
        k("tests/unit/test_age_v1.py", "age_and_pyrage_decrypt"),
    ),
    m(
        "age_v1: one file key for every file (stop 45)",
        "jaco/archive/age_v1.py",
        "    file_key = os.urandom(16)\n",
        "    file_key = bytes(16)\n",
        k("tests/unit/test_age_v1.py", "keys_of_its_own"),
    ),
    m(
        "age_v1: one payload nonce for every file (stop 45)",
        "jaco/archive/age_v1.py",
        "    nonce = os.urandom(16)\n",
        "    nonce = bytes(16)\n",
        k("tests/unit/test_age_v1.py", "keys_of_its_own"),
    ),
    m(
        "age_v1: one ephemeral key for every stanza (stop 45)",
        "jaco/archive/age_v1.py",
        "from_private_bytes(os.urandom(32))",
        "from_private_bytes(bytes(31) + b'\\x09')",
        k("tests/unit/test_age_v1.py", "keys_of_its_own"),
    ),
    m(
        "age_v1: the header's MAC over less than the header (stop 45)",
        "jaco/archive/age_v1.py",
        'hmac.new(hkdf(file_key, b"", b"header"), text, hashlib.sha256)',
        'hmac.new(hkdf(file_key, b"", b"header"), text[:-4], hashlib.sha256)',
        k("tests/unit/test_age_v1.py", "age_and_pyrage_decrypt"),
    ),
    m(
        "age_v1: a recipient's Bech32 checksum not checked (stop 45)",
        "jaco/archive/age_v1.py",
        "    if _polymod(expanded + values) != 1:\n",
        "    if False:\n",
        k("tests/unit/test_age_v1.py", "unless_its_bech32"),
    ),
    m(
        "age_v1: the plaintext's last short block not hashed (stop 45)",
        "jaco/archive/age_v1.py",
        "            plain.update(block if filled == BLOCK else bytes(block[:filled]))\n",
        "            if filled == BLOCK:\n                plain.update(block)\n",
        k("tests/unit/test_age_v1.py", "age_and_pyrage_decrypt"),
    ),
    m(
        "age_v1: a block handed back before it is hashed (stop 45)",
        "jaco/streams.py",
        "            self._thread.start()\n        self._raise_failure()\n"
        "        self._blocks.put(block)\n",
        "            self._thread.start()\n        self._raise_failure()\n"
        "        self._blocks.put(block)\n"
        "        if self._spare is not None and isinstance(block, bytearray):\n"
        "            self._spare.put(block)\n",
        k("tests/unit/test_age_v1.py", "age_and_pyrage_decrypt"),
    ),
    m(
        "encrypt_file: ssh-ed25519 recipients given to age_v1 with the rest (stop 45)",
        "jaco/archive/age.py",
        "        if all(isinstance(p, pyrage.x25519.Recipient) for p in parsed):\n",
        "        if any(isinstance(p, pyrage.x25519.Recipient) for p in parsed):\n",
        k("tests/unit/test_age_v1.py", "ssh_recipient"),
    ),
    m(
        "encrypt_file: X25519 recipients alone encrypted by pyrage, not age_v1 (read-through)",
        "jaco/archive/age.py",
        "        if all(isinstance(p, pyrage.x25519.Recipient) for p in parsed):\n",
        "        if False:\n",
        k("tests/unit/test_age_v1.py", "keys_of_its_own"),
    ),
    m(
        "age_v1 reader: the header's MAC not checked (stop 45)",
        "jaco/archive/age_v1_read.py",
        "            if not hmac.compare_digest(expected, mac):\n",
        "            if False:\n",
        k("tests/unit/test_age_v1.py", "header_changed"),
    ),
    m(
        "age_v1 reader: each block's final chunk taken as the last (stop 45)",
        "jaco/archive/age_v1_read.py",
        "            last = not more and at + piece == filled\n",
        "            last = at + piece == filled\n",
        k("tests/unit/test_age_v1.py", "reads_what_age"),
    ),
    m(
        "age_v1 reader: an empty last chunk after others taken (stop 45)",
        "jaco/archive/age_v1_read.py",
        "            if piece < TAG or (piece == TAG and (counter or not last)):\n",
        "            if piece < TAG:\n",
        k("tests/unit/test_age_v1.py", "empty_or_unflagged"),
    ),
    m(
        "age_v1 reader: the header read without a bound (stop 45)",
        "jaco/archive/age_v1_read.py",
        "    if so_far + len(line) > HEADER_MAX:\n",
        "    if False:\n",
        k("tests/unit/test_age_v1.py", "within_its_bound"),
    ),
    m(
        "age_v1 reader: base64 not held to its canonical form (stop 45)",
        "jaco/archive/age_v1_read.py",
        "    if b64(data) != text:\n",
        "    if False:\n",
        k("tests/unit/test_age_v1.py", "header_changed"),
    ),
    m(
        "age_v1 reader: a stanza line over 64 columns taken (stop 45)",
        "jaco/archive/age_v1_read.py",
        "            if len(piece) > 65:\n",
        "            if False:\n",
        k("tests/unit/test_age_v1.py", "header_changed"),
    ),
    m(
        "age_v1 reader: a chunk's plaintext written before it is authenticated (stop 45)",
        "jaco/archive/age_v1_read.py",
        "            except InvalidTag:\n                raise AgeError(\n",
        "            except InvalidTag:\n                write(out[done : done + piece - TAG])\n"
        "                raise AgeError(\n",
        k("tests/unit/test_age_v1.py", "payload_cut"),
    ),
    m(
        "decrypter: a damaged payload reported as a wrong key (stop 45)",
        "jaco/archive/decrypter.py",
        "        _end(EXIT_DAMAGED if exc.damaged else EXIT_NO_KEY, exc)\n",
        "        _end(EXIT_NO_KEY, exc)\n",
        k("tests/unit/test_decrypter.py", "damaged_payload"),
    ),
    m(
        "decrypter: the payload's first bytes, in the header's buffer, passed over (stop 45)",
        "jaco/archive/decrypter.py",
        "            self._held = memoryview(self._buffered.read1(len(self._buffered.peek(1))))\n",
        "            self._held = memoryview(b'')\n",
        k("tests/unit/test_decrypter.py", "never_sees_its_key"),
    ),
    m(
        "age_v1 reader: base64 of 4n+1 characters let through to the decoder (stop 45, review)",
        "jaco/archive/age_v1_read.py",
        "    if not set(text) <= _B64 or len(text) % 4 == 1:\n",
        "    if not set(text) <= _B64:\n",
        k("tests/unit/test_age_v1.py", "header_changed"),
    ),
    m(
        "age_v1 reader: an X25519 stanza body of any length (stop 45, review)",
        "jaco/archive/age_v1_read.py",
        "        if len(args) != 2 or len(body) != 32:\n",
        "        if len(args) != 2:\n",
        k("tests/unit/test_age_v1.py", "header_changed"),
    ),
    m(
        "age_v1 reader: a malformed X25519 stanza after the one that opens the file taken"
        " (stop 45, review)",
        "jaco/archive/age_v1_read.py",
        "        x25519.append((share, body))\n",
        "        x25519.append((share, body))\n        break\n",
        k("tests/unit/test_age_v1.py", "header_changed or two_identities"),
    ),
    m(
        "age_v1: a hashing thread hands its buffer back before hashing it (stop 45, review)",
        "jaco/streams.py",
        "                self._sha.update(block)\n"
        "                if self._spare is not None and isinstance(block, bytearray):\n"
        "                    self._spare.put(block)\n",
        "                if self._spare is not None and isinstance(block, bytearray):\n"
        "                    self._spare.put(block)\n"
        "                self._sha.update(block)\n",
        k("tests/unit/test_hash_threads.py", "handed_back"),
        k("tests/unit/test_age_v1.py", "age_and_pyrage_decrypt"),
    ),
    m(
        "age_v1: a recipient's key of another length than 32 bytes taken (stop 45, review)",
        "jaco/archive/age_v1.py",
        "    if len(key) != 32:\n",
        "    if False:\n",
        k("tests/unit/test_age_v1.py", "unless_its_bech32"),
    ),
    m(
        "age_v1: an identity's key of another length than 32 bytes taken (stop 45, review)",
        "jaco/archive/age_v1_read.py",
        "        if len(secret) != 32:\n",
        "        if False:\n",
        k("tests/unit/test_age_v1.py", "wrong_kind or not_one"),
    ),
    m(
        "decrypter: an identity that is not one reported as the backup's failure (stop 45, review)",
        "jaco/archive/decrypter.py",
        "    except AgeError as exc:  # the caller's keys, not the backup's fault: not exit 14\n"
        "        _end(1, exc)\n",
        "    except AgeError as exc:  # the caller's keys, not the backup's fault: not exit 14\n"
        "        _end(EXIT_NO_KEY, exc)\n",
        k("tests/unit/test_age_v1.py", "not_one"),
    ),
    m(
        "encrypt_file: a low-order recipient's ValueError let out as is (stop 45, review)",
        "jaco/archive/age_v1.py",
        "    except ValueError:  # a point of low order: the shared secret would be all zeros\n",
        "    except KeyError:\n",
        k("tests/unit/test_age_v1.py", "wrong_kind"),
    ),
    m(
        "BlockSha256: a failed hashing thread stops taking blocks (stop 46)",
        "jaco/streams.py",
        "            while self._blocks.get() is not None:\n"
        "                pass  # the feeder goes on",
        "            while False:\n                pass  # the feeder goes on",
        k("tests/unit/test_hash_threads.py", "fails or dies"),
    ),
    m(
        "BlockSha256: the feeder not told at its next update (stop 46)",
        "jaco/streams.py",
        "        self._raise_failure()\n        self._blocks.put(block)\n",
        "        self._blocks.put(block)\n",
        k("tests/unit/test_hash_threads.py", "fails"),
    ),
    m(
        "BlockSha256: the digest of a failed thread given out (stop 46)",
        "jaco/streams.py",
        "        self.close()\n        self._raise_failure()\n",
        "        self.close()\n",
        k("tests/unit/test_hash_threads.py", "fails"),
    ),
    m(
        "bench: a tree's uncommitted flows/ and native/ read as its base commit (stop 46)",
        "bench/node_ready.py",
        '    code = ["jaco", "flows", "native"]\n',
        '    code = ["jaco"]\n',
        k("tests/unit/test_bench_labels.py", "uncommitted"),
    ),
    m(
        "write-behind: written windows left in the page cache (stop 47)",
        "jaco/files.py",
        "            _forget(self._fd, self._waited, self._started)\n",
        "",
        k("tests/test_write_behind.py", "few_of_its_pages_in_memory"),
    ),
    m(
        "read-once: the pages read left in the page cache (stop 47)",
        "jaco/files.py",
        "            _forget(self._fd, self._forgotten, self._read)\n",
        "",
        k("tests/test_write_behind.py", "read_once or encrypt_stage"),
    ),
    m(
        "encrypt: the archive read into the page cache whole (stop 47)",
        "jaco/archive/age.py",
        'src = ReadOnce(stack.enter_context(open(source, "rb", buffering=0)))',
        'src = stack.enter_context(open(source, "rb", buffering=0))',
        k("tests/test_write_behind.py", "encrypt_stage"),
    ),
    m(
        "local store: the copy left in the page cache (stop 47)",
        "flows/storage.py",
        "                    behind.wrote()\n",
        "",
        k("tests/test_write_behind.py", "local_copy"),
    ),
    m(
        "read-once: the last part window left in the page cache (stop 47)",
        "jaco/files.py",
        "self._read - self._forgotten >= self._window or n == 0:",
        "self._read - self._forgotten >= self._window:",
        k("tests/test_write_behind.py", "last_part_window"),
    ),
    m(
        "read-once: forgets from the file's start, not where the reader began (stop 47)",
        "jaco/files.py",
        "self._read = self._forgotten = os.lseek(self._fd, 0, os.SEEK_CUR)",
        "self._read = self._forgotten = 0",
        k("tests/test_write_behind.py", "last_part_window"),
    ),
    m(
        "forget: a folio that began before the range left in the page cache (stop 47)",
        "jaco/files.py",
        "    start -= start % LARGEST_FOLIO\n",
        "",
        k("tests/test_write_behind.py", "folio"),
    ),
    m(
        "advertise: a loopback host name taken without a warning (stop 48)",
        "jaco/node/bootstrap.py",
        "    if ipaddress.ip_address(host).is_loopback:\n",
        "    if False:\n",
        k("tests/unit/test_advertised.py", "loopback"),
    ),
    m(
        "advertise: any private address warned about as loopback (stop 48)",
        "jaco/node/bootstrap.py",
        "    if ipaddress.ip_address(host).is_loopback:\n",
        "    if ipaddress.ip_address(host).is_private:\n",
        k("tests/unit/test_advertised.py", "loopback"),
    ),
    m(
        "jacod: serves a data dir primed for another node name (stop 48)",
        "jaco/server/daemon.py",
        "        if args.name is not None and config.name != args.name:",
        "        if False:",
        k("tests/test_cluster.py", "restart_keeps_state"),
    ),
    m(
        "cli: no server given and the node on this host not tried (stop 48)",
        "jaco/client/connection.py",
        "    named, server = bool(server), server or LOCAL_SERVER",
        "    named = bool(server)",
        k("tests/test_cluster.py", "node_on_this_host"),
    ),
    m(
        "systemd unit: jacod started with the --name of /etc/default/jaco again (stop 48)",
        "infra/systemd/jaco.service",
        "ExecStart=/usr/local/bin/jacod --data-dir",
        "ExecStart=/usr/local/bin/jacod --name ${NODE_NAME} --data-dir",
        k("tests/test_cluster.py", "restart_keeps_state"),
    ),
    m(
        "restore: the loopback warning printed before the work, a refusal then two lines (stop 48)",
        "jaco/node/bootstrap.py",
        "advertised(advertise_host, warnings.append, peer)",
        'advertised(advertise_host, lambda w: print(w, file=__import__("sys").stderr), peer)',
        k("tests/test_cli_input.py", "loopback_named"),
    ),
    m(
        "host names: a mistyped IP address (10.0.0.300) taken as a DNS name (stop 48)",
        "jaco/model/names.py",
        " or labels[-1].isdigit()",
        "",
        k("tests/test_cli_input.py", "10.0.0.300 or 999.1.1.1 or 10.0.0"),
    ),
    m(
        "node remove: an old node's replicas left stranded after a restore (stop 48)",
        "jaco/model/membership.py",
        "            if not record and not orphans:",
        "            if not record:",
        k("tests/test_drill.py", "seed_drill"),
    ),
    m(
        "join: advertised on loopback to a peer on another host, not refused (stop 48)",
        "jaco/node/bootstrap.py",
        "        if peer and not _loopback(split_server(peer)[0]):",
        "        if False:",
        k("tests/unit/test_advertised.py", "join"),
    ),
    m(
        "node remove: a record that appeared since the caller looked is removed (stop 48)",
        "jaco/model/membership.py",
        """            if record.get("member_id", "") != member_id:""",
        "            if False:",
        k("tests/test_join.py", "lost_node"),
    ),
    m(
        "host names: an IPv4 address in another form (0x7f000001) taken as a name (stop 48)",
        "jaco/model/names.py",
        "        malformed = True",
        "        pass",
        k("tests/test_cli_input.py", "0x7f000001"),
    ),
    m(
        "etcd: a deadline passed on a member without quorum said as 'not answering' (stop 48)",
        "jaco/model/etcd.py",
        "and not asked_status and await self._leaderless():",
        "and not asked_status and False:",
        k("tests/test_cluster.py", "without_quorum"),
    ),
    m(
        "cli: the warnings of a primed data dir never printed (stop 48, read-through)",
        "jaco/cli/common.py",
        "    for line in warnings:",
        "    for line in []:",
        k("tests/test_cli_input.py", "hint_then_the_warning"),
    ),
    m(
        "cli: tables cut to the terminal's width, or 80 columns in a pipe, with '…' (stop 49)",
        "jaco/cli/common.py",
        "out.print(Segments([segment for line in lines for segment in line]))",
        "out.print(shown)",
        k("tests/unit/test_backup_ls.py", "pipe"),
    ),
    m(
        "archive: a damaged gzip stream refused in gzip's and zlib's words (stop 49)",
        "jaco/archive/format.py",
        "    said = str(exc)\n    if isinstance(exc, TarFormatError):",
        "    said = str(exc)\n    if True:",
        "tests/unit/test_archive_messages.py",
    ),
    m(
        "archive: data after a gzip stream said to be no gzip file at all (stop 49)",
        "jaco/archive/format.py",
        'return "data that is not gzip follows its gzip stream"  # it began as gzip',
        'return "it is not a gzip file"',
        "tests/unit/test_archive_messages.py",
    ),
    m(
        "archive: the decrypter's plaintext cannot be peeked at (stop 49)",
        "jaco/archive/encrypted.py",
        "    def peek(self, n: int = 1) -> bytes:",
        "    def _peek(self, n: int = 1) -> bytes:",
        k("tests/test_restore_encrypted.py", "zipfile"),
    ),
    m(
        "demo: the UI's and the metrics' addresses printed, then stopped (stop 49)",
        "infra/demo.py",
        "say(where_to_look(kept=args.keep))",
        'say(where_to_look(kept=args.keep) + f"\\nthe Prefect UI: {server.ui}")',
        k("tests/test_demo.py", "ends_cleanly"),
    ),
    m(
        "etcd: a Status past its deadline asked again, its wait added (stop 49)",
        "jaco/model/etcd.py",
        "asked_status = method is self._maintenance.Status",
        "asked_status = False",
        "tests/unit/test_etcd_deadline.py",
    ),
    m(
        "cli: a table's title wider than the table cut to the terminal (stop 49, review)",
        "jaco/cli/common.py",
        'for part in (shown, shown.title or "")',
        "for part in (shown,)",
        "tests/unit/test_print_table.py",
    ),
    m(
        "decrypt: the plaintext read 8 MiB at a time, each copied to the hash's queue (stop 49)",
        "jaco/archive/encrypted.py",
        'view = memoryview(buffer).cast("B")[:CHUNK]',
        'view = memoryview(buffer).cast("B")',
        k("tests/unit/test_decrypter.py", "chunk"),
    ),
    m(
        "decrypt: a read into a view of wider items cut and hashed by items (stop 49, review)",
        "jaco/archive/encrypted.py",
        'view = memoryview(buffer).cast("B")[:CHUNK]',
        "view = memoryview(buffer)[:CHUNK]",
        k("tests/unit/test_decrypter.py", "wider"),
    ),
    m(
        "archive: a one-byte peek of gzip's first byte taken for gzip (stop 49, read-through)",
        "jaco/archive/format.py",
        "    return True if len(head) == 2 else None",
        "    return True",
        k("tests/unit/test_archive_messages.py", "both_are_seen"),
    ),
    m(
        "etcd: the member's own word for a passed deadline taken for etcd refusing (stop 50)",
        "jaco/model/etcd_errors.py",
        '        exc.details() == "context deadline exceeded"',
        "        False",
        k("tests/unit/test_etcd_deadline.py", "own_word"),
    ),
    m(
        "client: a ping's answer awaited gRPC's minute, not 30 s (stop 50)",
        "jaco/client/connection.py",
        '                ("grpc.http2.ping_timeout_ms", PING_TIMEOUT_MS),',
        "",
        k("tests/test_pipeline.py", "gone_quiet"),
    ),
    m(
        "client: no keepalive pings, a silent server waited on until the deadline (stop 52)",
        "jaco/client/connection.py",
        '                ("grpc.keepalive_time_ms", KEEPALIVE_MS),\n',
        "",
        k("tests/test_pipeline.py", "going_silent"),
    ),
    m(
        "flows: what a flow's process imported left in every full collection (stop 52)",
        "flows/tasks.py",
        "\ngc.freeze()\n",
        "\n",
        k("tests/unit/test_flow_heap_frozen.py", "freezes"),
    ),
    m(
        "tests: the hostile archives' memory limit not applied (stop 52, read-through)",
        "tests/test_hostile_archives.py",
        'LIMITED = ["prlimit", f"--data={MEMORY_LIMIT}", "--"]',
        "LIMITED: list[str] = []",
        k("tests/test_hostile_archives.py", "memory_limit_is_real"),
    ),
    m(
        "tests: xdist re-sorts modules by their number of tests, the longest last (stop 50)",
        "tests/conftest.py",
        "    config.option.loadscopereorder = False",
        "    pass",
        k("tests/unit/test_schedule_order.py", "scheduler"),
    ),
    m(
        "tests: the longest modules not collected first (stop 50)",
        "tests/conftest.py",
        '        return (-seconds[scope], scope) if scope in seconds else (0, "")',
        '        return (0, "")',
        k("tests/unit/test_schedule_order.py", "collected_first"),
    ),
    m(
        "etcd: a learner added past the member's deadline refused, not looked for (stop 50)",
        "jaco/model/etcd.py",
        "            if not past_deadline(exc):",
        "            if exc.code() != grpc.StatusCode.DEADLINE_EXCEEDED:",
        k("tests/unit/test_etcd_deadline.py", "learner_added"),
    ),
    m(
        "serve: --poll-seconds 0 taken, the runner then asks without a pause (stop 50, review)",
        "deployments/serve.py",
        "    if not (text.isascii() and text.isdigit()) or int(text) < 1:",
        "    if not (text.isascii() and text.isdigit()) or int(text) < 0:",
        "tests/unit/test_serve_args.py",
    ),
    m(
        "backup: jacod's meta pass on asyncio's shared threads, not lowered (stop 51)",
        "jaco/server/snapshot.py",
        "await _yielding(receiver.state_pass.finish)",
        "await asyncio.to_thread(receiver.state_pass.finish)",
        k("tests/test_snapshot_file.py", "meta_pass"),
    ),
    m(
        "backup: the meta pass's own thread not lowered (stop 51)",
        "jaco/server/snapshot.py",
        '"snapshot-meta", initializer=_yield_cpu)',
        '"snapshot-meta")',
        k("tests/test_snapshot_file.py", "meta_pass"),
    ),
    m(
        "backup: a second cancellation skips ending the meta's pass (stop 51, stop 53)",
        "jaco/server/snapshot.py",
        "        try:\n            await receiver.stop()\n        finally:",
        "        if True:\n            await receiver.stop()\n",
        k("tests/test_snapshot_file.py", "cancelled_twice"),
    ),
    m(
        "backup: the meta's pass fed on the event loop's thread, not the lowered one (stop 53)",
        "jaco/server/snapshot.py",
        "        for blob in pending:\n            self.state_pass.feed(blob)\n",
        "        for blob in pending:\n            self._loop.call_soon_threadsafe("
        "self.state_pass.feed, blob)\n",
        k("tests/test_snapshot_file.py", "meta_pass"),
    ),
    m(
        "state digest: jacod computes version 1 whatever version is asked for (stop 53)",
        "jaco/server/service.py",
        "self.store.state_digest(request.revision, request.digest_version or 1)",
        "self.store.state_digest(request.revision, 1)",
        k("tests/test_drill_checks.py", "versions_through"),
    ),
    m(
        "state digest: the client takes an answer of another version than it asked (stop 53)",
        "jaco/client/history.py",
        "    if answered != version:",
        "    if False:",
        k("tests/test_drill_checks.py", "versions_through"),
    ),
    m(
        "state digest: version 2 hashes the value itself, not its SHA-256 (stop 53)",
        "jaco/model/digest.py",
        "key, hashlib.sha256(value).digest()))",
        "key, value))",
        k("tests/unit/test_key_order.py", "v2"),
    ),
    m(
        "state digest v2: the file's walk keeps a key's first record, not its latest (stop 53)",
        "jaco/archive/snapshot_file.py",
        "            if held is None or (stored, page, index) > held[:3]:",
        "            if held is None:",
        k("tests/test_snapshot_file.py", "v2_counts_only"),
    ),
    m(
        "state digest v2: a record past its page read on (stop 53)",
        "jaco/archive/tree_walk.py",
        "            if start + ksize + vsize > len(page):",
        "            if False:",
        k("tests/test_snapshot_file.py", "v2_walk_refuses"),
    ),
    m(
        "state digest v2: a leaf spanning more than MAX_SPAN read whole (stop 53)",
        "jaco/archive/tree_walk.py",
        "        if span > MAX_SPAN:",
        "        if False:",
        k("tests/test_snapshot_file.py", "v2_walk_refuses"),
    ),
    m(
        "state digest v2 stream: records on free pages counted, liveness ignored (stop 53)",
        "native/src/stream.rs",
        "                if usize::try_from(page).map_or(false, |page| live.contains(page)) {",
        "                if !page.is_power_of_two() || page > 0 {",
        k("tests/test_snapshot_file.py", "trusts_only"),
    ),
    m(
        "state digest v2 stream: the revision taken over every page, free ones too (stop 53)",
        "native/src/stream.rs",
        "            revision = revision.max(self.max_rev[id as usize]);",
        "            revision = self.max_rev.iter().copied().max().unwrap_or(0);",
        k("tests/test_snapshot_file.py", "trusts_only"),
    ),
    m(
        "state digest v2 stream: no parsing budget (stop 53)",
        "native/src/stream.rs",
        "        if self.parsed > OVERLAP * self.received + 2 * MAX_SPAN {",
        "        if self.parsed > u64::MAX - 1 {",
        k("tests/test_snapshot_file.py", "over_and_over"),
    ),
    m(
        "state digest v2 stream: the window drops a page still incomplete (stop 53)",
        "native/src/stream.rs",
        "            keep = keep.min(oldest * ps);",
        "            keep = keep.min(oldest * ps + ps);",
        k("tests/test_snapshot_file.py", "stream_pass_is"),
    ),
    m(
        "restore: the state digest recomputed as version 1 whatever the format (stop 53)",
        "jaco/node/restore.py",
        "read_snapshot_state(snapshot, scratch, version=meta.digest_version)",
        "read_snapshot_state(snapshot, scratch)",
        k("tests/test_restore_bad_input.py", "version and digest"),
    ),
    m(
        "backup: the meta's pass ended on the event loop's thread (stop 53, review)",
        "jaco/server/snapshot.py",
        "            _end_behind(receiver.state_pass)",
        "            receiver.state_pass.abort()",
        k("tests/test_snapshot_file.py", "cancelled_twice"),
    ),
    m(
        "state digest v2 stream: what branches hold left unbounded (stop 53, review)",
        "native/src/stream.rs",
        "                        if self.held > self.received / 2 + MAX_SPAN {",
        "                        if self.held > u64::MAX - 1 {",
        k("tests/test_snapshot_file.py", "branches_hold"),
    ),
    m(
        "snapshot passes: a KeyValue holding a group refused, as protobuf does not (stop 53)",
        "native/src/bolt.rs",
        "            3 => {\n                if groups.len() == GROUP_DEPTH {",
        "            3 => {\n                if !groups.is_empty() || groups.is_empty() {",
        k("tests/test_snapshot_file.py", "v2_walk_refuses"),
    ),
    m(
        "state digest v2 stream: a deletion taken for a record (stop 53, review)",
        "native/src/stream.rs",
        "            if ksize > REVISION_KEY {\n                payload.push(DELETED);",
        "            if ksize > 99 {\n                payload.push(DELETED);",
        k("tests/test_snapshot_file.py", "v2_counts_only"),
    ),
    m(
        "backup: a thread started to end a pass that has finished (stop 54)",
        "jaco/server/snapshot.py",
        "    if state_pass.ended:\n        return\n",
        "",
        k("tests/test_snapshot_file.py", "meta_pass"),
    ),
    m(
        "stream pass: taken for ended while a feed holds it (stop 54)",
        "native/src/lib.rs",
        "Err(TryLockError::WouldBlock) => false,",
        "Err(TryLockError::WouldBlock) => true,",
        k("tests/test_snapshot_file.py", "left_to_end"),
    ),
    m(
        "stream pass: 24 bytes more held a page position (stop 54)",
        "native/src/stream.rs",
        "        self.max_rev.push(0);",
        "        self.max_rev.extend_from_slice(&[0; 4]);",
        k("tests/test_snapshot_memory.py", "few_bytes"),
    ),
]


def scratch_copy(into: Path) -> None:
    """The tree as it is now (tracked and untracked, ignored files left out)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for raw in filter(None, listed):
        rel = raw.decode()
        source = ROOT / rel
        if source.is_file():
            target = into / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


def build_native(tree: Path) -> None:
    """Compile jaco._native from the scratch copy's native/ into its jaco/ (the copy leaves out
    the ignored build product): a mutation of the Rust code is tested as built, and every
    other one runs with the module the tree holds. One target directory for every build, so a
    rebuild after a one-line change takes seconds."""
    target = ROOT / "build" / "mutation-target"
    env = {**os.environ, "CARGO_TARGET_DIR": str(target), "PYO3_PYTHON": sys.executable}
    subprocess.run(
        [
            "cargo",
            "build",
            "--quiet",
            "--release",
            "--manifest-path",
            str(tree / "native" / "Cargo.toml"),
        ],
        env=env,
        check=True,
    )
    shutil.copy2(target / "release" / "lib_native.so", tree / "jaco" / "_native.abi3.so")


def apply(tree: Path, mutation: Mutation) -> str | None:
    """Apply in place; the original text, or None if a replacement is not found exactly once."""
    path = tree / mutation.path
    original = path.read_text()
    text = original
    for old, new in mutation.replacements:
        if text.count(old) != 1:
            return None
        text = text.replace(old, new)
    path.write_text(text)
    return original


def pytest_args(selection: str) -> list[str]:
    node, _, expr = selection.partition("::-k ")
    return [node, "-k", expr] if expr else [node]


def run_tests(tree: Path, tests: tuple[str, ...], log: Path) -> bool:
    """True if the tests failed (the break was caught)."""
    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONDONTWRITEBYTECODE": "1"}
    caught = False
    with log.open("a") as out:
        for selection in tests:
            cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:randomly",
                   "-p", "no:cacheprovider", *pytest_args(selection)]  # fmt: skip
            out.write(f"$ {' '.join(cmd)}\n")
            out.flush()
            done = subprocess.run(cmd, cwd=tree, env=env, stdout=out, stderr=subprocess.STDOUT)
            if done.returncode == 5:
                out.write("no test selected: the list names tests that do not exist\n")
                return False
            caught = caught or done.returncode != 0
    return caught


def shown(selection: str) -> str:
    return selection.replace("tests/", "").replace("::-k ", " -k ")


Row = tuple[str, str, str, str]  # check, file, tests, verdict


def run_part(part: list[Mutation], log: Path) -> dict[str, Row]:
    """Each break of `part` in turn, on a scratch copy of its own; its row by name."""
    log.write_text("")
    rows: dict[str, Row] = {}
    with tempfile.TemporaryDirectory(prefix="jaco-mutation-") as tmp:
        tree = Path(tmp)
        scratch_copy(tree)
        build_native(tree)
        for mutation in part:
            started = time.monotonic()
            original = apply(tree, mutation)
            native = mutation.path.startswith("native/")
            if original is None:
                verdict = "DID NOT APPLY"
            else:
                try:
                    if native:
                        build_native(tree)
                    caught = run_tests(tree, mutation.tests, log)
                finally:
                    (tree / mutation.path).write_text(original)
                    if native:
                        build_native(tree)
                verdict = "yes" if caught else "NO"
            tests = ", ".join(shown(t) for t in mutation.tests)
            rows[mutation.name] = (mutation.name, mutation.path, tests, verdict)
            print(
                f"{verdict:>13}  {mutation.name}  ({time.monotonic() - started:.0f}s)", flush=True
            )
    return rows


def parts(chosen: list[Mutation], jobs: int) -> list[list[Mutation]]:
    """`chosen` dealt out to `jobs` runners. Every break of native/ goes to the first: the
    builds share one cargo target directory, and only one runner may build a broken module."""
    dealt: list[list[Mutation]] = [[] for _ in range(max(1, jobs))]
    others = [x for x in chosen if not x.path.startswith("native/")]
    dealt[0] += [x for x in chosen if x.path.startswith("native/")]
    for i, mutation in enumerate(others):
        dealt[(i + 1) % len(dealt)].append(mutation)
    return [part for part in dealt if part]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="", help="run the mutations whose name has this")
    parser.add_argument(
        "--unit",
        action="store_true",
        help="only the mutations whose tests are all under tests/unit (minutes, not hours)",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="runners side by side, each on a scratch copy of its own (the tests are made to "
        "run two at a time, as `make test` runs them): 2 takes the whole list in about 40 "
        "minutes on two cores",
    )
    parser.add_argument("--list", action="store_true")
    parser.add_argument("--log", default=str(ROOT / "build" / "mutation.log"))
    args = parser.parse_args()
    chosen = [
        x
        for x in MUTATIONS
        if args.only in x.name and (not args.unit or all(t.startswith(UNIT) for t in x.tests))
    ]
    if args.list:
        for x in chosen:
            print(f"{x.name}  [{x.path}]  {' '.join(x.tests)}")
        return
    log = Path(args.log)
    log.parent.mkdir(parents=True, exist_ok=True)
    dealt = parts(chosen, args.jobs)
    logs = [log] if len(dealt) <= 1 else [
        log.with_name(f"{log.stem}-{i + 1}{log.suffix}") for i in range(len(dealt))
    ]  # fmt: skip
    found: dict[str, Row] = {}
    with concurrent.futures.ThreadPoolExecutor(max(1, len(dealt))) as pool:
        for rows in pool.map(run_part, dealt, logs):
            found.update(rows)
    ordered = [found[x.name] for x in chosen]
    print()
    print("| check broken on purpose | file | tests run | caught |")
    print("|---|---|---|---|")
    for name, path, tests, verdict in ordered:
        print(f"| {name} | `{path}` | `{tests}` | {verdict} |")
    bad = [r for r in ordered if r[3] != "yes"]
    shown_logs = ", ".join(str(x) for x in logs)
    print(f"\n{len(ordered) - len(bad)} of {len(ordered)} breaks caught; log: {shown_logs}")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()

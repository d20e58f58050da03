"""Join tokens are single-use and expire; a refused join leaves the data dir empty."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import pytest

from infra.localcluster import JACO, Cluster, Node, Result, cluster_of, free_port, run, wait_for
from jaco.errors import Conflict
from jaco.model.etcd import Etcd
from jaco.model.store import Store
from jaco.node.config import DataDir


def _join(cluster: Cluster, name: str, token: str) -> tuple[Node, Result]:
    return cluster.try_join(name, token, cluster.nodes["node-1"])


def test_join_token_is_single_use(single: Cluster) -> None:
    token = single.ok("node", "issue-join-token").out.strip()
    node, first = _join(single, "node-2", token)
    assert first.code == 0, first.err
    node.start()
    single.wait_ready(["node-1", "node-2"])

    late, second = _join(single, "node-3", token)
    assert (second.code, second.err) == (
        5,
        "error: the join token is unknown, already used or expired: issue a new one with "
        "`jaco node issue-join-token` on a node of the cluster\n",
    )
    assert not late.data_dir.exists()
    names = [n["name"] for n in single.ok("cluster", "status", "--json").json()["nodes"]]
    assert names == ["node-1", "node-2"]
    events = single.ok("audit", "--type", "NODE_JOINING", "--json").out.splitlines()
    assert len(events) == 1


def test_expired_join_token_is_refused(single: Cluster) -> None:
    token = single.ok("node", "issue-join-token", "--ttl", "1").out.strip()
    time.sleep(2.5)
    node, result = _join(single, "node-2", token)
    assert result.code != 0
    assert "expired" in result.err
    assert not node.data_dir.exists()


def test_operator_token_is_not_a_join_token(single: Cluster) -> None:
    node, result = _join(single, "node-2", single.token)
    assert result.code != 0 and "this is not a join token" in result.err
    assert not node.data_dir.exists()


def test_refused_joins_say_what_to_do_and_change_nothing(single: Cluster) -> None:
    via = single.nodes["node-1"]
    token = single.ok("node", "issue-join-token").out.strip()
    before = (_audit_count(single), _names(single), _members(single))

    taken = Node("node-1", single.root / "taken")
    result = single.run_join(taken, token, via)
    assert (result.code, result.err) == (
        4,
        "error: a node named node-1 is already in the cluster: give this node another --name\n",
    )
    assert not taken.data_dir.exists()

    # etcd's own refusal ("Peer URLs already exists"), in the operator's terms.
    clash = Node("node-2", single.root / "clash")
    clash.peer_port = via.peer_port
    result = single.run_join(clash, token, via)
    assert (result.code, result.err) == (
        4,
        "error: another member of the cluster already has the peer URL "
        f"https://127.0.0.1:{via.peer_port}: give this node its own --advertise-host or "
        "--etcd-peer-port\n",
    )
    assert not clash.data_dir.exists()
    assert (_audit_count(single), _names(single), _members(single)) == before

    # Neither refusal used the token up.
    _, result = _join(single, "node-2", token)
    assert result.code == 0, result.err


def test_three_nodes_joining_at_once_all_end_ready(single: Cluster) -> None:
    """etcd 3.4 admits one learner at a time: the later joins wait for the earlier learner
    to be promoted (each node is started as soon as its join returns, as an operator would)."""
    via = single.nodes["node-1"]
    names = ["node-2", "node-3", "node-4"]
    tokens = {n: single.ok("node", "issue-join-token").out.strip() for n in names}
    started = time.monotonic()
    with ThreadPoolExecutor(len(names)) as pool:
        joins = [pool.submit(single.try_join, n, tokens[n], via) for n in names]
        for done in as_completed(joins):
            node, result = done.result()
            assert result.code == 0, result.err
            # At most one line, and only to say whom it waits for.
            assert len(result.err.splitlines()) <= 1, result.err
            assert not result.err or WAITING.fullmatch(result.err.strip()), result.err
            node.start()  # from this (the main) thread: the daemon dies with the test run
    single.wait_ready(["node-1", *names])
    print(f"three joins at once: all READY after {time.monotonic() - started:.1f} s")
    joined = single.ok("audit", "--type", "NODE_JOINING", "--json").out.splitlines()
    assert sorted(json.loads(e)["detail"]["name"] for e in joined) == names
    assert _members(single) == {"node-1": False, **dict.fromkeys(names, False)}


def test_a_waiting_join_is_bounded_and_its_token_survives(single: Cluster) -> None:
    via = single.nodes["node-1"]
    token2, token3, token4 = (single.ok("node", "issue-join-token").out.strip() for _ in "234")
    node2, result = single.try_join("node-2", token2, via)
    assert result.code == 0, result.err  # admitted as a learner, but not started yet
    before = (_audit_count(single), _names(single), _members(single))

    node3 = single.new_node("node-3")
    node3.data_dir.mkdir(mode=0o700)
    started = time.monotonic()
    result = single.run_join(node3, token3, via, "--wait", "12")  # the server holds each 5 s
    assert 12 <= time.monotonic() - started < 40
    assert result.code == 7, result.err
    waiting, error = result.err.splitlines()  # the wait said once, then one line
    assert WAITING.fullmatch(waiting), waiting
    assert error.startswith("error: gave up after "), error
    assert error.endswith(
        "node node-2 is still catching up as a learner; make sure jacod runs on that node and "
        "reaches the cluster (see its log), then run this join again (the join token stays "
        "valid until it expires)"
    ), error
    assert "etcd:" not in result.err and "etcdserver" not in result.err
    assert list(node3.data_dir.iterdir()) == []  # the operator's empty dir stays, empty
    assert (_audit_count(single), _names(single), _members(single)) == before

    # A join killed while it waits has written nothing: its data dir was never created.
    node4 = single.new_node("node-4")
    proc = single.start_join(node4, token4, via)
    assert WAITING.fullmatch(proc.stderr.readline().strip())  # type: ignore[union-attr]
    # The token went in on stdin: no other local user can read it from the process table
    # (read while the join runs: just after exec, cmdline is still empty).
    cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes()
    assert b"\0node\0join\0" in cmdline and token4.encode() not in cmdline
    assert token4.encode() not in Path(f"/proc/{proc.pid}/environ").read_bytes()
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=30)
    assert not node4.data_dir.exists()
    assert (_audit_count(single), _names(single), _members(single)) == before

    # Once the learner is started and promoted, the same token admits the node.
    node2.start()
    single.wait_ready(["node-2"])
    result = single.run_join(node3, token3, via)
    assert result.code == 0, result.err
    node3.start()
    single.wait_ready(["node-1", "node-2", "node-3"])


# Whom a join waits for: the learner's node name, or its peer URL while that learner's node
# record is not written yet (jaco.server.join._pending_learner gives it 3 s; three joins at
# once on a loaded machine took longer in one fresh-clone run at stop 30).
WAITING = re.compile(
    r"waiting: (node node-\d|the learner at https://127\.0\.0\.1:\d+) is still catching up as "
    r"a learner \(etcd admits one learner at a time\); giving up after \d+ s…"
)


def _audit_count(cluster: Cluster) -> int:
    return len(cluster.ok("audit", "--json").out.splitlines())


def _names(cluster: Cluster) -> list[str]:
    return [n["name"] for n in cluster.ok("cluster", "status", "--json").json()["nodes"]]


def _members(cluster: Cluster) -> dict[str, bool]:
    """etcd's own member list (name: is learner), read with node-1's client certificate."""
    listing = run([*cluster.nodes["node-1"].etcdctl_command(), "member", "list", "-w", "json"])
    assert listing.code == 0, listing.err
    return {
        m.get("name") or m["peerURLs"][0]: bool(m.get("isLearner"))
        for m in json.loads(listing.out)["members"]
    }


def test_join_token_sources_and_the_deprecated_flag(tmp_path: Path) -> None:
    """--token-file FILE, --token-file - (stdin), JACO_JOIN_TOKEN; --token still works but
    warns. Each source is shown read by how far the join then gets (no cluster listens)."""
    closed = f"127.0.0.1:{free_port()}"
    data = tmp_path / "data"
    fake = f"jaco1.join.{'a' * 64}.{'b' * 12}.{'c' * 43}"
    token_file = tmp_path / "join.token"
    token_file.write_text(fake + "\n")
    (tmp_path / "empty").write_text("\n")
    base = [JACO, "node", "join", "--peer", closed, "--name", "n2", "--data-dir", str(data)]
    unreachable = f"error: cannot reach {closed}: Connection refused\n"
    cases: list[tuple[list[str], dict[str, str], str | None, int, str]] = [
        (["--token-file", str(token_file)], {}, None, 7, unreachable),
        (["--token-file", "-"], {}, fake, 7, unreachable),
        ([], {"JACO_JOIN_TOKEN": fake}, None, 7, unreachable),
        (
            ["--token", fake],
            {},
            None,
            7,
            "warning: --token is visible to every local user in the process list; use "
            "--token-file FILE, --token-file - (stdin) or JACO_JOIN_TOKEN\n" + unreachable,
        ),
        (
            ["--token", fake, "--token-file", str(token_file)],
            {},
            None,
            2,
            "error: give the join token once: --token-file, not --token too\n",
        ),
        (
            [],
            {"JACO_JOIN_TOKEN": ""},
            None,
            2,
            "error: no join token: use --token-file FILE, --token-file - (stdin) or set "
            "JACO_JOIN_TOKEN\n",
        ),
        (
            ["--token-file", str(tmp_path / "missing")],
            {},
            None,
            2,
            f"error: cannot read the join token from {tmp_path / 'missing'}: No such file or "
            "directory\n",
        ),
        (
            ["--token-file", str(tmp_path / "empty")],
            {},
            None,
            2,
            f"error: {tmp_path / 'empty'} holds no join token\n",
        ),
        (["--token-file", "-"], {}, "", 2, "error: stdin holds no join token\n"),
    ]
    for args, env, stdin, code, err in cases:
        result = run([*base, *args], env={"JACO_JOIN_TOKEN": "", **env}, input_=stdin)
        assert (result.code, result.err) == (code, err), args
        assert not data.exists()


async def _remove_unseen(via: Node, name: str) -> int:
    """The store's removal of `name` by a caller that found no record of it."""
    etcd = Etcd(DataDir(via.data_dir).etcd_socket)
    try:
        return await Store(etcd).remove_node("test", name, member_removed=False, member_id="")
    finally:
        await etcd.close()


def test_a_lost_node_is_removed_and_joins_and_replicas_go_on(tmp_path: Path) -> None:
    """A learner whose host never came back blocks every later join: `jaco node remove` frees
    its place. A voter lost for good is removed through another node, its replicas placed on
    the nodes left. Each removal is in the audit log; mistakes are refused in one line."""
    with cluster_of(tmp_path, 2) as cluster:
        via = cluster.nodes["node-1"]
        cluster.ok("deploy", "web", "--image", "nginx:1", "--replicas", "4")
        token3, token4 = (cluster.ok("node", "issue-join-token").out.strip() for _ in "34")
        _, admitted = cluster.try_join("node-3", token3, via)  # its host is lost before it starts
        assert admitted.code == 0, admitted.err
        node4 = cluster.new_node("node-4")
        node4.data_dir.mkdir(mode=0o700)
        blocked = cluster.run_join(node4, token4, via, "--wait", "6")
        assert blocked.code == 7 and "node node-3 is still catching up" in blocked.err

        removed = cluster.ok("node", "remove", "node-3", server=via.server)
        assert removed.out.strip() == (
            "Removed node node-3 (its etcd member removed; 0 replicas moved)"
        )
        assert "node-3" not in _names(cluster) and "node-3" not in _members(cluster)
        joined = cluster.run_join(node4, token4, via)
        assert joined.code == 0, joined.err
        node4.start()
        cluster.wait_ready(["node-1", "node-2", "node-4"])

        def placed() -> dict[str, str]:
            (web,) = cluster.ok("status", "--json", server=via.server).json()["deployments"]
            return {r["id"]: r["node"] for r in web["placed"]}

        before = placed()
        on_node2 = sorted(rid for rid, node in before.items() if node == "node-2")
        assert len(on_node2) == 2
        cluster.nodes["node-2"].stop(signal.SIGKILL)  # its disk is gone: it never comes back
        for name, code, message in (
            ("node-1", 2, "node node-1 is the node you are talking to: remove it through "
                          "another node"),
            ("node-9", 3, "no node named node-9"),
            ("Node_2", 2, "invalid node name 'Node_2'"),
        ):  # fmt: skip
            refused = cluster.jaco("node", "remove", name, server=via.server)
            assert refused.code == code, refused.err
            assert refused.err.startswith(f"error: {message}"), refused.err
            assert len(refused.err.splitlines()) == 1 and refused.out == ""
        assert placed() == before
        # node-2 dead: removing a live voter would leave one started voter of two
        wait_for(lambda: cluster.states(via).get("node-2") == "DOWN", 60, "node-2 DOWN")
        below = cluster.jaco("node", "remove", "node-4", server=via.server)
        assert below.code == 7, below.err
        assert below.err.startswith(
            "error: removing node node-4 now would leave fewer started voters than a quorum"
        ), below.err
        assert set(_members(cluster)) == {"node-1", "node-2", "node-4"}
        # A removal that found no record (as when it began before a join under that name
        # finished) does not take the record it finds now, nor its replicas: that record's
        # etcd member would be left without one, blocking every later join.
        with pytest.raises(Conflict, match="^node node-2 changed while it was being removed"):
            asyncio.run(_remove_unseen(via, "node-2"))
        assert placed() == before and "node-2" in _names(cluster)

        gone = cluster.ok("node", "remove", "node-2", server=via.server)
        assert gone.out.strip() == "Removed node node-2 (its etcd member removed; 2 replicas moved)"
        after = placed()
        assert set(after) == set(before) and set(after.values()) == {"node-1", "node-4"}
        assert {rid: after[rid] for rid in on_node2} == dict.fromkeys(on_node2, "node-4")
        assert set(_names(cluster)) == {"node-1", "node-4"}
        assert set(_members(cluster)) == {"node-1", "node-4"}
        events = [json.loads(e) for e in cluster.ok("audit", "--type", "NODE_REMOVED", "--json")
                  .out.splitlines()]  # fmt: skip
        assert [(e["detail"]["name"], e["detail"]["replicas_moved"]) for e in events] == [
            ("node-3", 0),
            ("node-2", 2),
        ]
        cluster.ok("audit", "verify")
        cluster.ok("scale", "web", "--replicas", "5")  # the two left are a quorum
        again = cluster.jaco("node", "remove", "node-2", server=via.server)
        assert again.code == 3 and again.err.startswith("error: no node named node-2")

"""A real 3-node cluster: init + join, replication, leader loss, restarts, clean shutdown."""

from __future__ import annotations

import signal
import socket
import stat
from pathlib import Path

from infra.localcluster import JACO, JACOD, Cluster, cluster_of, free_port, run, wait_for
from jaco.client.connection import DEFAULT_PORT, LOCAL_SERVER
from jaco.errors import DataDirError, Unavailable
from tests.netfaults import FaultyProxy
from tests.refusal import refused


def test_three_nodes_ready_and_writes_visible_everywhere(cluster3: Cluster) -> None:
    assert cluster3.states() == {"node-1": "READY", "node-2": "READY", "node-3": "READY"}
    via = cluster3.nodes["node-2"]
    cluster3.ok("deploy", "web", "--image", "nginx:1.27", "--replicas", "3", server=via.server)
    for node in cluster3.nodes.values():
        deps = cluster3.ok("status", "--json", server=node.server).json()["deployments"]
        web = next(d for d in deps if d["name"] == "web")
        assert web["image"] == "nginx:1.27"
        assert len(web["placed"]) == 3
        # The scheduler spreads replicas over the three ready nodes.
        assert {r["node"] for r in web["placed"]} == {"node-1", "node-2", "node-3"}
    cluster3.ok("rm", "web")


def test_cluster_status_reports_one_leader_with_raft_position(cluster3: Cluster) -> None:
    nodes = cluster3.ok("cluster", "status", "--json").json()["nodes"]
    assert sum(1 for n in nodes if n["leader"]) == 1
    assert all(int(n["raft_index"]) > 0 and int(n["raft_term"]) > 0 for n in nodes)
    assert {n["address"] for n in nodes} == {n.server for n in cluster3.nodes.values()}


def test_leader_loss_keeps_cluster_serving_and_node_catches_up(tmp_path: Path) -> None:
    with cluster_of(tmp_path, 3) as cluster:
        leader = cluster.leader()
        others = [n for n in cluster.nodes.values() if n is not leader]
        etcd_pid = leader.etcd_pid()
        assert etcd_pid is not None
        assert leader.stop() == 0
        # The etcd child went with its jacod: no orphan.
        assert not Path(f"/proc/{etcd_pid}").exists()

        cluster.ok(
            "deploy",
            "during-outage",
            "--image",
            "busybox:1",
            "--replicas",
            "2",
            server=others[0].server,
        )
        deps = cluster.ok("status", "--json", server=others[1].server).json()["deployments"]
        assert [d["name"] for d in deps] == ["during-outage"]
        wait_for(lambda: cluster.states(others[0])[leader.name] == "DOWN", 30, "DOWN state")
        new_leader = cluster.leader(others[0])
        assert new_leader is not leader

        leader.start()
        cluster.wait_ready([leader.name], via=others[0])
        deps = cluster.ok("status", "--json", server=leader.server).json()["deployments"]
        assert [d["name"] for d in deps] == ["during-outage"]


def test_restart_keeps_state_and_second_daemon_refused(single: Cluster) -> None:
    node = single.nodes["node-1"]
    single.ok("deploy", "keep", "--image", "redis:7", "--replicas", "2")
    single.ok("route", "add", "keep-route", "--host", "keep.example", "--deployment", "keep")

    second = run(
        [JACOD, "--name", "node-1", "--data-dir", str(node.data_dir), "--listen", "127.0.0.1:1"],
        timeout=30,
    )
    assert second.code != 0
    assert "another jacod is running" in second.err
    assert "Traceback" not in second.err
    other = [JACOD, "--name", "node-9", "--data-dir", str(node.data_dir), "--listen", "127.0.0.1:1"]
    wrong = run(other, timeout=30)
    assert wrong.code == DataDirError.exit_code
    assert wrong.err.strip() == f"jacod: {node.data_dir} belongs to node node-1, not node-9"

    assert node.stop() == 0
    # Started by the systemd unit's own command line: no --name, the data dir names the node.
    node.start(_unit_command(data_dir=str(node.data_dir), listen=node.server))
    single.wait_ready(["node-1"])
    status = single.ok("status", "--json").json()
    assert [(d["name"], d["replicas"]) for d in status["deployments"]] == [("keep", 2)]
    routes = single.ok("route", "ls", "--json").json()["routes"]
    assert [r["name"] for r in routes] == ["keep-route"]


def _unit_command(data_dir: str, listen: str) -> list[str]:
    """infra/systemd/jaco.service's ExecStart with infra/systemd/jaco.default's environment
    (the data dir and listen address replaced), expanded as systemd does: ${X} is one word,
    a bare $X word splits at whitespace (none when empty)."""
    unit = Path(__file__).parents[1] / "infra" / "systemd"
    lines = (unit / "jaco.default").read_text().splitlines()
    env = dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))
    env |= {"JACO_DATA_DIR": data_dir, "JACO_LISTEN": listen}
    (start,) = [
        x for x in (unit / "jaco.service").read_text().splitlines() if x.startswith("ExecStart=")
    ]
    words = start.removeprefix("ExecStart=").split()
    assert words[0] == "/usr/local/bin/jacod"
    argv = [JACOD]
    for word in words[1:]:
        if word.startswith("${"):
            argv.append(env[word[2:-1]])
        elif word.startswith("$"):
            argv.extend(env.get(word[1:], "").split())
        else:
            argv.append(word)
    return argv


def test_sigkill_of_jacod_takes_etcd_with_it(single: Cluster) -> None:
    node = single.nodes["node-1"]
    etcd_pid = node.etcd_pid()
    assert etcd_pid is not None
    node.stop(signal.SIGKILL)
    wait_for(lambda: not Path(f"/proc/{etcd_pid}").exists(), 15, "etcd to exit after jacod")


def test_init_writes_private_files_and_refuses_non_empty_dir(tmp_path: Path) -> None:
    data = tmp_path / "d"
    token_file = tmp_path / "t"
    base = [
        JACO,
        "cluster",
        "init",
        "--name",
        "n1",
        "--data-dir",
        str(data),
        "--token-file",
        str(token_file),
        "--advertise-host",
        "127.0.0.1",
    ]
    bad = run([*base, "--etcd-peer-port", "0"], timeout=60)
    assert bad.code == 2 and "--etcd-peer-port 0 is not a port number" in bad.err
    assert not data.exists()

    # etcd cannot bind a port somebody else holds: init fails cleanly, leaves nothing behind.
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        ports = ["--api-port", str(free_port()), "--etcd-client-port", str(free_port())]
        failed = run([*base, *ports, "--etcd-peer-port", str(taken)], timeout=90)
    assert failed.code != 0 and "Traceback" not in failed.err
    assert "etcd exited" in failed.err and "address already in use" in failed.err
    assert not data.exists() and not token_file.exists()

    ports += ["--etcd-peer-port", str(free_port())]
    result = run([*base, *ports], timeout=60)
    assert result.code == 0, result.err
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    for path in (data / "pki" / "node.key", data / "node.json", data / "etcd.log"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert token_file.read_text().startswith("jaco1.op.")

    before = {p.name: p.stat().st_mtime_ns for p in data.iterdir()}
    again = run([*base, *ports], timeout=60)
    assert again.code != 0
    assert "is not empty; refusing to overwrite it" in again.err
    assert {p.name: p.stat().st_mtime_ns for p in data.iterdir()} == before


def test_commands_default_to_the_node_on_this_host(single: Cluster) -> None:
    """Neither --server nor JACO_SERVER: the node on this host (127.0.0.1:7000), as the backup
    page's bare `jaco cluster status` on the restored node expects; etcdctl's way."""
    node = single.nodes["node-1"]
    unset = {"JACO_SERVER": ""}
    with socket.socket() as holder:  # bound, not listening: 7000 refuses while it is held
        holder.bind(("127.0.0.1", DEFAULT_PORT))
        refused = single.jaco("cluster", "status", env=unset)
    assert refused.code == Unavailable.exit_code
    assert refused.err == (
        f"error: cannot reach {LOCAL_SERVER}: Connection refused (no --server or JACO_SERVER "
        "given: tried the node on this host)\n"
    )
    local = FaultyProxy(node.api_port, listen_port=DEFAULT_PORT)  # the node, as if on 7000
    try:
        nodes = single.ok("cluster", "status", "--json", env=unset).json()["nodes"]
    finally:
        local.close()
    assert [n["name"] for n in nodes] == ["node-1"]


def test_a_node_without_quorum_says_so_whatever_is_asked(tmp_path: Path) -> None:
    """Of two nodes, one stopped: the other's member knows no leader. Whether etcd answers
    "request timed out" (a linearizable read, `cluster status`) or lets jacod's own deadline
    pass (`status`, `audit`), the one line says what is wrong: no quorum, not "not answering"."""
    with cluster_of(tmp_path, 2) as cluster:
        alone, stopped = cluster.nodes["node-1"], cluster.nodes["node-2"]
        assert stopped.stop() == 0
        for args in (("status",), ("audit",), ("cluster", "status")):
            result = cluster.jaco(*args, server=alone.server)
            line = refused(result, Unavailable.exit_code, "^error: this node's etcd member reaches")
            assert "no quorum" in line and "use another node" in line, line

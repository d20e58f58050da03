"""Every number, host, duration and choice `jaco` takes is checked before anything is sent:
one line on stderr, exit 2, no traceback, the server never contacted (a listening socket that
must see no connection), no data dir created. And the audit log holding events that are not
valid JSON events: `jaco audit verify` names the first, `jaco audit` lists them as damaged.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.localcluster import JACO, Cluster, cluster_of, free_port, run
from jaco.client.connection import open_client
from jaco.errors import InvalidArgument
from jaco.model.audit import EVENT_TYPES
from jaco.model.keys import event_key
from jaco.v1 import jaco_pb2 as pb
from tests.refusal import refused, silent_env, untouched

OFFLINE = ["--data-dir", "{tmp}/data", "--advertise-host", "127.0.0.1"]
PORTS = "use 1 to 65535"
TYPES = "use one of " + ", ".join(sorted(EVENT_TYPES))

CASES: list[tuple[list[str], str]] = [
    (["node", "issue-join-token", "--ttl", "-5"], r"invalid --ttl -5: use 1 to 604800 seconds"),
    (["node", "issue-join-token", "--ttl", "0"], r"invalid --ttl 0: use 1 to 604800 seconds"),
    (["node", "issue-join-token", "--ttl", "99999999999"], r"invalid --ttl 99999999999"),
    (
        ["deploy", "x", "--image", "nginx:1", "--replicas", "99999999999"],
        "replicas must be between 0 and 100, not 99999999999",
    ),
    (["scale", "x", "--replicas", "99999999999"], "replicas must be between 0 and 100"),
    (
        ["route", "add", "r", "--host", "h.example", "--deployment", "d", "--port", "99999999999"],
        f"invalid --port 99999999999: {PORTS}",
    ),
    (["route", "add", "r", "--host", "h.example", "--deployment", "d", "--port", "0"], PORTS),
    (["route", "add", "r", "--host", "évil..", "--deployment", "d"], "invalid route host 'évil..'"),
    (["backup", "--output", "{tmp}/b.tar.gz", "--timeout", "0"], r"invalid --timeout 0\.0: use"),
    (["backup", "--output", "{tmp}/b.tar.gz", "--timeout", "-5"], r"invalid --timeout -5\.0"),
    (["backup", "--output", "{tmp}/b.tar.gz", "--timeout", "nan"], "invalid --timeout nan"),
    (["backup", "--output", "{tmp}/b.tar.gz", "--timeout", "inf"], "invalid --timeout inf"),
    (["audit", "--timeout", "0"], r"invalid --timeout 0\.0: use 0\.001 to 86400\.0 seconds"),
    (["audit", "verify", "--timeout", "nan"], "invalid --timeout nan"),
    (["cert", "issue", "c", "--out-dir", "{tmp}", "--days", "0"], "invalid --days 0: use 1 to 825"),
    (["cert", "issue", "c", "--out-dir", "{tmp}", "--days", "99999999999"], "invalid --days"),
    (["audit", "--type", "NOPE"], f"invalid --type 'NOPE': {TYPES}$"),
    (["audit", "--since", "yesterday"], "invalid --since time 'yesterday'"),
    (["token", "create", "--role", "nope"], "invalid role 'nope': use one of admin, viewer$"),
    (["status", "--server", "évil..:7000"], "invalid server address 'évil..:7000'"),
    (["status", "--server", "127.0.0.1:99999999999"], "invalid server address"),
    (["deploy", "x", "--image", "i", "--replicas", "abc"], "Invalid value for '--replicas'"),
    (["nosuch"], "No such command 'nosuch'"),
    (["deploy"], "Missing argument 'name'"),
    (
        ["restore", "--input", "{tmp}/none.tar.gz", "--name", "r1", *OFFLINE[:2]]
        + ["--advertise-host", "évil.."],
        "invalid --advertise-host 'évil..'",
    ),
    (
        ["restore", "--input", "{tmp}/none.tar.gz", "--name", "r1", *OFFLINE]
        + ["--api-port", "99999999999"],
        "--api-port 99999999999 is not a port number",
    ),
    (
        ["restore", "--input", "{tmp}/none.tar.gz", "--name", "r1", *OFFLINE]
        + ["--etcd-peer-port", "0"],
        "--etcd-peer-port 0 is not a port number",
    ),
    (
        ["cluster", "init", "--name", "n1", *OFFLINE[:2], "--advertise-host", "évil.."],
        "invalid --advertise-host 'évil..'",
    ),
    # An IP address mistyped is not a DNS name (no top-level domain is numeric).
    (
        ["restore", "--input", "{tmp}/none.tar.gz", "--name", "r1", *OFFLINE[:2]]
        + ["--advertise-host", "10.0.0.300"],
        "invalid --advertise-host '10.0.0.300': use an IP address or a DNS name",
    ),
    (
        ["cluster", "init", "--name", "n1", *OFFLINE[:2], "--advertise-host", "999.1.1.1"],
        "invalid --advertise-host '999.1.1.1'",
    ),
    (["route", "add", "r", "--host", "10.0.0", "--deployment", "d"], "invalid route host '10.0.0'"),
    (["status", "--server", "0x7f000001:7000"], "invalid server address '0x7f000001:7000'"),
]


@pytest.mark.parametrize(("args", "message"), CASES, ids=[" ".join(c[0]) for c in CASES])
def test_bad_input_is_refused_before_anything_is_sent(
    tmp_path: Path, silent_server: socket.socket, args: list[str], message: str
) -> None:
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    result = run([JACO, *args], env=silent_env(silent_server), timeout=30)
    refused(result, 2, message)
    assert untouched(silent_server), "the server was contacted"
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "something was written"


# The CLI on a host whose name resolves to loopback, as on a default Debian host, wherever
# the test runs: only the resolver's answer is replaced.
LOOPBACK_HOST = [
    sys.executable,
    "-c",
    "import socket, sys; socket.gethostbyname = lambda name: '127.0.1.1'; "
    "sys.argv[0] = 'jaco'; from jaco.cli.main import main; main()",
]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["restore", "--input", "{tmp}/none.tar.gz", "--name", "r1"], "--api-port 0 is not a"),
        (["cluster", "init", "--name", "n1"], "--api-port 0 is not a port number"),
    ],
)
def test_a_refusal_on_a_loopback_named_host_is_one_line(
    tmp_path: Path, silent_server: socket.socket, args: list[str], message: str
) -> None:
    """The warning such a host earns comes once the command has done its work: a refusal
    before that stays its one line."""
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    flags = ["--data-dir", str(tmp_path / "data"), "--api-port", "0"]
    result = run([*LOOPBACK_HOST, *args, *flags], env=silent_env(silent_server), timeout=30)
    refused(result, 2, message)
    assert untouched(silent_server), "the server was contacted"
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "something was written"


@pytest.fixture(scope="module")
def damaged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A cluster whose audit events 3 and 4 were overwritten (etcdctl, the node's own cert):
    one not JSON at all, one JSON of the wrong shape."""
    with cluster_of(tmp_path_factory.mktemp("damaged"), 1) as cluster:
        for i in range(3):
            cluster.ok("token", "create", "--description", f"t{i}")
        etcdctl = cluster.nodes["node-1"].etcdctl_command()
        for seq, value in ((3, "not json {"), (4, '{"seq": "x", "at": "yesterday"}')):
            subprocess.run(
                [*etcdctl, "put", event_key(seq), value], check=True, capture_output=True
            )
        yield cluster


def test_audit_verify_names_the_first_damaged_event(damaged: Cluster) -> None:
    result = damaged.jaco("audit", "verify")
    refused(result, 1, "^Audit chain broken at event 3: it is not a valid JSON event$")


def test_audit_lists_damaged_events_as_damaged(damaged: Cluster) -> None:
    listed = damaged.jaco("audit")
    assert listed.code == 0 and "Traceback" not in listed.err, listed.err
    lines = listed.out.splitlines()
    assert len(lines) >= 5 and "DAMAGED" in lines[2] and "DAMAGED" in lines[3], listed.out
    assert "TOKEN_CREATED" in lines[4]
    assert listed.err.strip() == (
        "2 damaged events in the log (3, 4): `jaco audit verify` checks the chain"
    )
    as_json = [json.loads(line) for line in damaged.ok("audit", "--json").out.splitlines()]
    assert [int(e["seq"]) for e in as_json][:5] == [1, 2, 3, 4, 5]
    assert as_json[2]["type"] == as_json[3]["type"] == "DAMAGED"
    assert "not a valid JSON event" in as_json[2]["detail"]["reason"]
    # A filter cannot see into a damaged event: it is listed whatever the filter.
    filtered = damaged.ok("audit", "--type", "token_created", "--json").out.splitlines()
    assert {json.loads(line)["type"] for line in filtered} == {"TOKEN_CREATED", "DAMAGED"}


def test_the_server_refuses_unknown_event_types_too(damaged: Cluster) -> None:
    """For API clients other than the CLI."""
    with open_client(damaged.nodes["node-1"].server, damaged.token) as client:
        with pytest.raises(InvalidArgument, match="invalid --type 'NOPE': use one of"):
            list(client.stream("Audit", pb.AuditRequest(types=["NOPE"]), timeout=30))


def test_init_on_a_loopback_named_host_ends_with_the_hint_then_the_warning(
    tmp_path: Path,
) -> None:
    """Its success: the start hint names the data dir primed (no --name: jacod reads it there),
    and the warning comes last, on stderr, as the only line there."""
    data = tmp_path / "data"
    ports = ["--api-port", str(free_port()), "--etcd-client-port", str(free_port())]
    ports += ["--etcd-peer-port", str(free_port())]
    args = ["cluster", "init", "--name", "n1", "--data-dir", str(data), *ports]
    result = run([*LOOPBACK_HOST, *args, "--token-file", str(tmp_path / "token")], timeout=120)
    assert result.code == 0, result.err
    assert f"Start it: jacod --data-dir {data}\n" in result.out
    assert result.err == (
        "warning: this host's name resolves to 127.0.1.1, a loopback address: no other node "
        "can reach or join this one (give --advertise-host an address they can reach)\n"
    )

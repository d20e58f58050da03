"""Who may call what: every RPC of the service descriptor × every kind of caller, against a
real jacod.

READ rows let admin and viewer tokens through, WRITE rows admin tokens only (a viewer gets
PERMISSION_DENIED), and Join is authenticated by the join token in its request; everyone else
gets UNAUTHENTICATED. "Through" means the call got past authentication and authorisation:
each call sends a request that is just valid enough to get there and may then fail for its
content (NOT_FOUND, INVALID_ARGUMENT...). A refusal must have the exact code and must leave
the store as it was (state digest, audit head, audit event count).

The expectations are a reviewed copy of `jaco.server.service.ACCESS`, pinned to it: derived
from the table under test, a weakened row (a viewer allowed to CreateToken) would change the
expectation along with the server. Changing who may call an RPC means changing both.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from infra.localcluster import Cluster, cluster_of, wait_for
from jaco.client.connection import Client, Connection
from jaco.model import pki
from jaco.server.service import ACCESS, JOIN, READ, WRITE
from jaco.v1 import jaco_pb2 as pb

METHODS = {m.name: m for m in pb.DESCRIPTOR.services_by_name["Jaco"].methods}

EXPECTED = {
    "Status": READ,
    "ClusterStatus": READ,
    "Deploy": WRITE,
    "Scale": WRITE,
    "RemoveDeployment": WRITE,
    "AddRoute": WRITE,
    "ListRoutes": READ,
    "RemoveRoute": WRITE,
    "IssueCert": WRITE,
    "ListCerts": READ,
    "CreateToken": WRITE,
    "ListTokens": READ,
    "RevokeToken": WRITE,
    "Audit": READ,
    "VerifyAudit": READ,
    "StateDigest": READ,
    "IssueJoinToken": WRITE,
    "RemoveNode": WRITE,
    "Join": JOIN,
    "Backup": WRITE,
    "Changes": WRITE,
}

CALLERS = (
    "admin",
    "viewer",
    "revoked",  # an admin token, revoked
    "forged",  # the admin token's id with another secret
    "expired-join",  # a join token past its time to live
    "other-cluster",  # another cluster's admin token
    "join",  # a valid join token
    "none",  # no authorization metadata at all
    "malformed",
)

# What each call sends: let through, a request that then fails on its content, so that it
# changes nothing; refused, one that would change the store if it were let through, so that
# a handler acting before it checks shows in the state. Any other RPC gets its empty request.
LET_THROUGH: dict[str, dict[str, Any]] = {
    "CreateToken": {"role": "no-such-role"},
    "IssueJoinToken": {"ttl_seconds": 7 * 86400 + 1},
    "Join": {"name": "Not A Node Name"},  # + the caller's token
    "RemoveNode": {"name": "Not A Node Name"},
}
REFUSED: dict[str, dict[str, Any]] = {
    "Deploy": {"name": "probe", "image": "probe:1", "replicas": 1},
    "Scale": {"name": "web", "replicas": 2},
    "RemoveDeployment": {"name": "web"},
    "AddRoute": {"name": "probe", "host": "probe.example.com", "deployment": "web", "port": 80},
    "RemoveRoute": {"name": "www"},
    "IssueCert": {"common_name": "probe", "dns_names": ["probe.example.com"]},
    "CreateToken": {"role": "admin", "description": "probe"},
    "RevokeToken": {"id": "<the viewer's>"},
    "IssueJoinToken": {"ttl_seconds": 3600},
    "Join": {"name": "probe", "peer_url": "https://127.0.0.1:1", "api_address": "127.0.0.1:2"},
    "RemoveNode": {"name": "probe"},  # the learner Join admits, in the write-changes test
}
AUTH_CODES = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)


def refusal(access: str, caller: str) -> grpc.StatusCode | None:
    """The status code `caller` must get for an RPC with this access (None: let through)."""
    allowed = {READ: ("admin", "viewer"), WRITE: ("admin",), JOIN: ("join",)}[access]
    if caller in allowed:
        return None
    if access == WRITE and caller == "viewer":
        return grpc.StatusCode.PERMISSION_DENIED
    return grpc.StatusCode.UNAUTHENTICATED


@dataclass
class World:
    cluster: Cluster
    tokens: dict[str, str]
    clients: dict[str, Client]
    csr_pem: str

    def call(self, rpc: str, caller: str, let_through: bool) -> grpc.StatusCode:
        """The status code of one call. A stream is read to its end, or, when it is to be let
        through, to its first message (OK): a backup is not taken for every cell."""
        method = METHODS[rpc]
        fields = (LET_THROUGH if let_through else REFUSED).get(rpc, {})
        request = getattr(pb, method.input_type.name)(**fields)
        if rpc == "Join":
            request.token = self.tokens[caller]
            request.csr_pem = "" if let_through else self.csr_pem
        elif rpc == "RevokeToken" and not let_through:
            request.id = self.tokens["viewer"].split(".")[3]
        client = self.clients[caller]
        stub = getattr(client.stub, rpc)
        try:
            if method.server_streaming:
                stream = stub(request, timeout=30, metadata=client.metadata)
                try:
                    if let_through:
                        next(stream, None)
                    else:
                        list(stream)
                finally:
                    stream.cancel()
            else:
                stub(request, timeout=30, metadata=client.metadata)
        except grpc.RpcError as exc:
            return exc.code()  # type: ignore[attr-defined,no-any-return]
        return grpc.StatusCode.OK

    def state(self) -> tuple[Any, ...]:
        admin = self.clients["admin"]
        digest = admin.call("StateDigest", pb.StateDigestRequest())
        events = admin.call("VerifyAudit", pb.VerifyAuditRequest()).events
        return digest.state_digest, digest.audit_head_seq, digest.audit_head_hash, events


@contextlib.contextmanager
def _world(root: Path) -> Iterator[World]:
    with cluster_of(root / "main", 1) as cluster, cluster_of(root / "other", 1) as other:
        tokens = {
            "admin": cluster.token,
            "viewer": _created(cluster, "viewer"),
            "revoked": _created(cluster, "admin"),
            "expired-join": cluster.ok("node", "issue-join-token", "--ttl", "1").out.strip(),
            "other-cluster": other.token,
            "forged": cluster.token[: cluster.token.rindex(".") + 1] + "C" * 43,
            "malformed": "letmein",
            "none": "",
        }
        cluster.ok("token", "revoke", tokens["revoked"].split(".")[3])
        server = cluster.nodes["node-1"].server
        ca_pem = (cluster.nodes["node-1"].data_dir / "pki" / "ca.crt").read_bytes()
        clients = {caller: Client(Connection(server, t, ca_pem)) for caller, t in tokens.items()}
        cluster.ok("deploy", "web", "--image", "nginx:1", "--replicas", "1")
        cluster.ok("route", "add", "www", "--host", "www.example.com", "--deployment", "web")
        csr_pem, _ = pki.make_csr("probe", pki.node_hosts("probe", "127.0.0.1"))
        world = World(cluster, tokens, clients, csr_pem.decode())
        # The expired join token's record goes with its lease: wait for that, so that no
        # change of the store happens on its own while the matrix runs.
        wait_for(lambda: _join_tokens(world) == 0, 30, "the expired join token to vanish")
        tokens["join"] = cluster.ok("node", "issue-join-token").out.strip()
        clients["join"] = Client(Connection(server, tokens["join"], ca_pem))
        clients["none"].metadata = ()  # no authorization header, not an empty one
        try:
            yield world
        finally:
            for client in clients.values():
                client.close()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with _world(tmp_path_factory.mktemp("authz")) as found:
        yield found


def _created(cluster: Cluster, role: str) -> str:
    return cluster.ok("token", "create", "--role", role).out.strip().splitlines()[-1]


def _join_tokens(world: World) -> int:
    counts = world.clients["admin"].call("StateDigest", pb.StateDigestRequest()).counts
    return int(counts.get("join_tokens", 0))


def test_every_rpc_has_exactly_one_access_row() -> None:
    assert set(ACCESS) == set(METHODS), (
        f"RPCs without a row in ACCESS: {sorted(set(METHODS) - set(ACCESS))}; "
        f"rows without an RPC: {sorted(set(ACCESS) - set(METHODS))}"
    )
    assert ACCESS == EXPECTED, "ACCESS changed: review who may call what, then update EXPECTED"


@pytest.mark.parametrize("caller", CALLERS)
@pytest.mark.parametrize("rpc", sorted(METHODS))
def test_matrix(world: World, rpc: str, caller: str) -> None:
    if rpc not in EXPECTED:
        pytest.fail(f"RPC {rpc} has no row in ACCESS (and none here): who may call it?")
    expected = refusal(EXPECTED[rpc], caller)
    before = world.state()
    code = world.call(rpc, caller, let_through=expected is None)
    if expected is None:
        assert code not in (*AUTH_CODES, grpc.StatusCode.UNKNOWN), f"{caller} → {rpc}: {code}"
    else:
        assert code == expected, f"{caller} → {rpc}: {code}, expected {expected}"
        assert world.state() == before, f"{caller} → {rpc} was refused but changed the store"


def test_the_callers_are_what_they_claim(world: World) -> None:
    """Each refusal is for the reason its caller stands for: the revoked token was revoked
    (not never created), the join token exists and was not used up by the Join cells; and
    what the refused calls aimed at is still there."""
    listed = world.cluster.ok("token", "ls", "--json").json()["tokens"]
    assert {t["id"] for t in listed if t["revoked"]} == {world.tokens["revoked"].split(".")[3]}
    assert _join_tokens(world) == 1
    deployments = world.cluster.ok("status", "--json").json()["deployments"]
    assert [(d["name"], d["replicas"]) for d in deployments] == [("web", 1)]
    assert [r["name"] for r in world.cluster.ok("route", "ls", "--json").json()["routes"]] == [
        "www"
    ]


def test_the_refused_requests_would_have_changed_the_store(tmp_path: Path) -> None:
    """The matrix's refusals are not vacuous: let through, each write would have changed the
    store. (On a world of its own: it does change the store, and tests run in any order.)"""
    with _world(tmp_path) as world:
        _each_write_changes(world)


def _each_write_changes(world: World) -> None:
    order = ["Deploy", "Scale", "AddRoute", "IssueCert", "CreateToken", "IssueJoinToken"]
    order += ["RevokeToken", "RemoveRoute", "RemoveDeployment", "Backup", "Join", "RemoveNode"]
    # Changes is admin-only for what it reads (the CA key, token hashes), not for a write.
    admin_reads = {"Changes"}
    writes = [rpc for rpc, access in EXPECTED.items() if access != READ and rpc not in admin_reads]
    assert sorted(order) == sorted(writes)
    for rpc in order:
        if rpc == "RemoveDeployment":
            world.cluster.ok("route", "rm", "probe")  # the AddRoute probe's, to web
        before = world.state()
        code = world.call(rpc, "join" if rpc == "Join" else "admin", let_through=False)
        assert code == grpc.StatusCode.OK, f"{rpc}: {code}"
        assert world.state() != before, rpc

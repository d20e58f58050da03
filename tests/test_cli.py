"""The CLI on bad input: one line on stderr, a non-zero exit, no traceback, nothing changed."""

from __future__ import annotations

import json
import subprocess

import pytest

from infra.localcluster import JACO, Cluster, wait_for

BAD_INPUT = [
    (["deploy", "Bad_Name", "--image", "x:1"], "invalid deployment name 'Bad_Name'"),
    (["deploy", "ok", "--image", "x:1", "--replicas", "-1"], "replicas cannot be negative"),
    (["deploy", "ok", "--image", "x:1", "--replicas", "101"], "replicas must be between 0"),
    (["deploy", "ok", "--image", "has space"], "invalid image"),
    (["deploy", "ok", "--image", "x:1", "--env", "NOEQUALS"], "invalid --env"),
    (["scale", "ghost", "--replicas", "2"], "no deployment named ghost"),
    (["scale", "ghost", "--replicas", "-3"], "replicas cannot be negative"),
    (["rm", "ghost"], "no deployment named ghost"),
    (["route", "add", "r1", "--host", "h", "--deployment", "ghost"], "no deployment named ghost"),
    (["route", "rm", "ghost"], "no route named ghost"),
    (["token", "revoke", "nope"], "no token with id nope"),
    (["token", "create", "--role", "root"], "invalid role 'root'"),
    (["audit", "--since", "yesterday"], "invalid --since time"),
    (["status", "--server", "127.0.0.1:1"], "cannot reach 127.0.0.1:1"),
]


@pytest.mark.parametrize(("args", "message"), BAD_INPUT, ids=lambda v: str(v)[:40])
def test_bad_input_gets_one_line_error(cluster3: Cluster, args: list[str], message: str) -> None:
    before = cluster3.ok("status", "--json").json()
    events = len(cluster3.ok("audit", "--json").out.splitlines())
    result = cluster3.jaco(*args)
    assert result.code != 0
    assert message in result.err
    assert "Traceback" not in result.err + result.out
    assert len(result.err.strip().splitlines()) <= 2  # one message (rich may wrap it once)
    assert cluster3.ok("status", "--json").json() == before
    assert len(cluster3.ok("audit", "--json").out.splitlines()) == events


def test_duplicate_deployment_refused_and_original_kept(cluster3: Cluster) -> None:
    cluster3.ok("deploy", "dup", "--image", "a:1", "--replicas", "1")
    result = cluster3.jaco("deploy", "dup", "--image", "b:2", "--replicas", "5")
    assert result.code != 0 and "deployment dup already exists" in result.err
    deps = {d["name"]: d for d in cluster3.ok("status", "--json").json()["deployments"]}
    assert deps["dup"]["image"] == "a:1" and deps["dup"]["replicas"] == 1
    cluster3.ok("rm", "dup")


def test_audit_follow_streams_new_events(cluster3: Cluster) -> None:
    """An event made after the follower has replayed the history reaches it through the
    follow: the history it replayed was read before the event existed."""
    import os
    import uuid

    env = {"JACO_TOKEN": cluster3.token, "JACO_SERVER": cluster3.nodes["node-3"].server}
    tag = uuid.uuid4().hex[:6]
    deployment = f"followed-{tag}"
    cluster3.ok("deploy", deployment, "--image", "a:1", "--replicas", "0")
    routes = [f"before-{tag}", f"after-{tag}"]
    cluster3.ok("route", "add", routes[0], "--host", "b.example", "--deployment", deployment)
    follower = subprocess.Popen(
        [JACO, "audit", "--follow", "--json", "--type", "ROUTE_ADDED"],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, **env},
    )
    try:
        assert follower.stdout is not None
        names: list[str] = []
        while routes[0] not in names:  # the history, replayed up to the route made before
            line = wait_for(follower.stdout.readline, 30, "the replayed history")
            names.append(json.loads(line)["detail"]["name"])
        cluster3.ok(
            "route", "add", routes[1], "--host", "f.example", "--deployment", f"followed-{tag}"
        )
        line = wait_for(follower.stdout.readline, 30, "a followed event")
        event = json.loads(line)
        assert event["type"] == "ROUTE_ADDED" and event["detail"]["name"] == routes[1]
    finally:
        follower.terminate()
        follower.wait(10)
    for route in routes:
        cluster3.ok("route", "rm", route)
    cluster3.ok("rm", deployment)


def test_help_explains_commands() -> None:
    out = subprocess.run([JACO, "--help"], capture_output=True, text=True, check=True).stdout
    for command in ("status", "deploy", "cluster", "route", "cert", "token", "node", "audit"):
        assert command in out


def test_cert_issue_writes_private_key_and_lists(cluster3: Cluster, tmp_path) -> None:  # type: ignore[no-untyped-def]
    cluster3.ok("cert", "issue", "svc", "--dns", "svc.example", "--out-dir", str(tmp_path))
    key = tmp_path / "svc.key"
    assert key.stat().st_mode & 0o777 == 0o600
    verify = subprocess.run(
        ["openssl", "verify", "-CAfile", str(tmp_path / "ca.crt"), str(tmp_path / "svc.crt")],
        capture_output=True,
        text=True,
    )
    assert verify.returncode == 0, verify.stderr
    certs = cluster3.ok("cert", "ls", "--json").json()["certs"]
    assert any(c["common_name"] == "svc" and "svc.example" in c["dns_names"] for c in certs)

"""Authentication as the operator meets it: the messages for missing, malformed, forged,
revoked and read-only tokens, the last admin kept, and CA pinning. That every RPC checks every
kind of token, and a refusal changes nothing, is tests/test_authorization.py's matrix."""

from __future__ import annotations

from pathlib import Path

from infra.localcluster import Cluster, cluster_of


def _refused(result, message: str) -> None:  # type: ignore[no-untyped-def]
    assert result.code != 0
    assert message in result.err, result.err
    assert "Traceback" not in result.err


def test_missing_malformed_and_wrong_tokens_are_refused(single: Cluster) -> None:
    _refused(single.jaco("status", token=""), "no token: set JACO_TOKEN")
    _refused(single.jaco("status", token="letmein"), "the token is malformed")
    # Right cluster (CA pin matches) but a secret the cluster never issued.
    good = single.token
    forged = good[: good.rindex(".") + 1] + "A" * 43
    _refused(single.jaco("status", token=forged), "the token is not valid for this cluster")
    # Unknown token id under the same pin.
    parts = good.split(".")
    parts[3] = "0" * 12
    _refused(single.jaco("status", token=".".join(parts)), "not valid for this cluster")


def test_revoked_token_refused_everywhere_and_last_admin_kept(single: Cluster) -> None:
    created = single.ok("token", "create", "--role", "admin", "--description", "ci").out
    second = created.strip().splitlines()[-1]
    token_id = second.split(".")[3]
    assert single.ok("status", token=second)
    single.ok("token", "revoke", token_id)
    _refused(single.jaco("status", token=second), f"the token {token_id} has been revoked")
    tokens = single.ok("token", "ls", "--json").json()["tokens"]
    assert {t["id"]: t["revoked"] for t in tokens}[token_id] is True
    # The cluster keeps only hashes: no listing ever shows a secret.
    assert second.split(".")[4] not in single.ok("token", "ls", "--json").out

    first_id = single.token.split(".")[3]
    _refused(single.jaco("token", "revoke", first_id), "last active admin token")
    assert single.ok("status")


def test_viewer_token_reads_but_cannot_write(single: Cluster) -> None:
    out = single.ok("token", "create", "--role", "viewer").out
    viewer = out.strip().splitlines()[-1]
    assert single.ok("status", token=viewer)
    _refused(single.jaco("deploy", "x", "--image", "y:1", token=viewer), "is read-only")


def test_client_pinned_to_another_cluster_is_refused(single: Cluster, tmp_path: Path) -> None:
    with cluster_of(tmp_path / "other", 1) as other:
        # A token of cluster B pins B's CA: cluster A's server does not present it.
        _refused(single.jaco("status", token=other.token), "did not present the cluster CA")
        # With B's CA as an explicit trust root, A's certificate does not verify.
        ca_b = other.nodes["node-1"].data_dir / "pki" / "ca.crt"
        result = single.jaco("status", token=other.token, env={"JACO_CA_CERT": str(ca_b)})
        assert result.code != 0 and "Traceback" not in result.err
        # A's token with B's CA file is caught before anything is sent.
        _refused(
            single.jaco("status", env={"JACO_CA_CERT": str(ca_b)}),
            "is not the CA this token belongs to",
        )

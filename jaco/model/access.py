"""Who may call: operator tokens (admin, viewer) and single-use join tokens.

The store keeps only SHA-256 hashes, looked up by the token's public id and compared in
constant time (jaco.model.tokens).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from jaco.errors import (
    AlreadyExists,
    Conflict,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
)
from jaco.model import tokens
from jaco.model.engine import Change, Engine, Principal, View
from jaco.model.keys import P_JOIN, P_NODES, P_TOKENS, decode, now

ISSUE_ANOTHER = "issue a new one with `jaco node issue-join-token` on a node of the cluster"


class Access(Engine):
    async def authenticate(self, text: str) -> Principal:
        token = tokens.parse_token(text, tokens.OPERATOR)
        if token.ca_fingerprint != await self.ca_fingerprint():
            raise Unauthenticated("the token belongs to another cluster (its CA does not match)")
        kv, _ = await self.etcd.get(P_TOKENS + token.id)
        record = decode(kv) if kv else None
        if not tokens.matches(token, record["sha256"] if record else None) or record is None:
            raise Unauthenticated("the token is not valid for this cluster")
        if record.get("revoked"):
            raise Unauthenticated(f"the token {token.id} has been revoked")
        return Principal(token.id, record["role"])

    async def create_token(
        self, actor: str, role: str, description: str
    ) -> tuple[tokens.Token, dict[str, Any]]:
        tokens.check_role(role)
        token = tokens.new_token(tokens.OPERATOR, await self.ca_fingerprint())
        record = token_record(token, role, description)

        async def fn(view: View, change: Change) -> None:
            change.put(P_TOKENS + token.id, record)
            change.audit("TOKEN_CREATED", id=token.id, role=role)

        await self.mutate(actor, fn)
        return token, record

    async def revoke_token(self, actor: str, token_id: str) -> None:
        async def fn(view: View, change: Change) -> None:
            record = await view.get(P_TOKENS + token_id)
            if record is None:
                raise NotFound(f"no token with id {token_id}")
            if record.get("revoked"):
                raise Conflict(f"token {token_id} is already revoked")
            active_admins = [
                t
                for t in await view.list(P_TOKENS)
                if t["role"] == "admin" and not t.get("revoked")
            ]
            if record["role"] == "admin" and len(active_admins) == 1:
                raise PermissionDenied(
                    "refusing to revoke the last active admin token: create another first"
                )
            record.pop("schema", None)
            change.put(P_TOKENS + token_id, {**record, "revoked": True, "revoked_at": now()})
            change.audit("TOKEN_REVOKED", id=token_id)

        await self.mutate(actor, fn)

    async def token_list(self) -> list[dict[str, Any]]:
        return await (await self.view()).list(P_TOKENS)

    # -- join tokens and nodes -----------------------------------------------------------

    async def issue_join_token(self, actor: str, ttl: int) -> tuple[tokens.Token, str]:
        if not 1 <= ttl <= tokens.MAX_JOIN_TTL:
            raise InvalidArgument("a join token's time to live must be 1 s to 7 days")
        token = tokens.new_token(tokens.JOIN, await self.ca_fingerprint())
        lease = await self.etcd.lease_grant(ttl)
        expires = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=ttl)).isoformat(
            timespec="seconds"
        )

        async def fn(view: View, change: Change) -> None:
            record = {
                "id": token.id,
                "sha256": token.sha256,
                "created_at": now(),
                "expires_at": expires,
            }
            change.put(P_JOIN + token.id, record, lease=lease)
            change.audit("JOIN_TOKEN_ISSUED", id=token.id, expires_at=expires)

        await self.mutate(actor, fn)
        return token, expires

    async def _join_token_record(self, view: View, token: tokens.Token) -> dict[str, Any]:
        if token.ca_fingerprint != await self.ca_fingerprint():
            raise Unauthenticated(f"the join token belongs to another cluster: {ISSUE_ANOTHER}")
        record = await view.get(P_JOIN + token.id)
        if not tokens.matches(token, record["sha256"] if record else None) or not record:
            raise Unauthenticated(
                f"the join token is unknown, already used or expired: {ISSUE_ANOTHER}"
            )
        if dt.datetime.fromisoformat(record["expires_at"]) <= dt.datetime.now(dt.UTC):
            raise Unauthenticated(f"the join token has expired: {ISSUE_ANOTHER}")
        return record

    async def check_join_token(self, text: str) -> None:
        """Refuse a bad, used or expired join token before a joining node's input is read."""
        token = tokens.parse_token(text, tokens.JOIN)
        await self._join_token_record(await self.view(), token)

    async def check_node_name_free(self, name: str) -> None:
        if await (await self.view()).get(P_NODES + name) is not None:
            raise name_taken(name)


def token_record(token: tokens.Token, role: str, description: str) -> dict[str, Any]:
    return {
        "id": token.id,
        "sha256": token.sha256,
        "role": role,
        "description": description,
        "created_at": now(),
        "revoked": False,
    }


def name_taken(name: str) -> AlreadyExists:
    return AlreadyExists(
        f"a node named {name} is already in the cluster: give this node another --name"
    )

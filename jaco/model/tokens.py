"""Operator and join tokens: their format, parsing and hashing, the roles and lifetimes they
may have.

A token is `jaco1.<kind>.<ca-sha256>.<id>.<secret>` (kind `op` or `join`). Like k3s's
secure tokens it pins the cluster CA, so a client holding nothing but the token can
authenticate the server before sending it. The cluster stores only SHA-256(token), looked up
by the public id and compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from jaco.errors import InvalidArgument, Unauthenticated

OPERATOR = "op"
JOIN = "join"
ROLES = ("admin", "viewer")
MAX_JOIN_TTL = 7 * 86400
_TOKEN_RE = re.compile(r"^jaco1\.(op|join)\.([0-9a-f]{64})\.([0-9a-f]{12})\.([A-Za-z0-9_-]{43})$")
# Compared against when the id is unknown, so that a miss costs the same as a mismatch.
_DUMMY_HASH = hashlib.sha256(b"jaco-unknown-token").hexdigest()


def check_role(role: str) -> str:
    if role not in ROLES:
        raise InvalidArgument(f"invalid role {role!r}: use one of {', '.join(ROLES)}")
    return role


@dataclass(frozen=True)
class Token:
    kind: str
    ca_fingerprint: str
    id: str
    secret: str

    def __str__(self) -> str:
        return f"jaco1.{self.kind}.{self.ca_fingerprint}.{self.id}.{self.secret}"

    @property
    def sha256(self) -> str:
        return hash_token(str(self))


def new_token(kind: str, ca_fingerprint: str) -> Token:
    return Token(kind, ca_fingerprint, secrets.token_hex(6), secrets.token_urlsafe(32))


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def parse_token(text: str, kind: str = OPERATOR) -> Token:
    match = _TOKEN_RE.match(text.strip())
    if not match:
        raise Unauthenticated(
            "the token is malformed: expected jaco1.<kind>.<ca-fingerprint>.<id>.<secret>"
        )
    token = Token(*match.groups())
    if token.kind != kind:
        expected = "an operator token" if kind == OPERATOR else "a join token"
        hint = "" if kind == OPERATOR else ": issue one with `jaco node issue-join-token`"
        raise Unauthenticated(f"this is not {expected} (it is a '{token.kind}' token){hint}")
    return token


def matches(token: Token, stored_sha256: str | None) -> bool:
    """Constant-time comparison of the token's hash with the stored one (None: unknown id)."""
    expected = stored_sha256 if stored_sha256 is not None else _DUMMY_HASH
    ok = hmac.compare_digest(token.sha256.encode(), expected.encode())
    return ok and stored_sha256 is not None

"""Translation at the API's edge: stored records to protobuf messages, request fields to
checked values (HOST:PORT addresses)."""

from __future__ import annotations

import json
from typing import Any, TypeVar
from urllib.parse import urlsplit

from google.protobuf import json_format
from google.protobuf.message import Message

from jaco.errors import InvalidArgument
from jaco.model.names import check_host
from jaco.v1 import jaco_pb2 as pb

M = TypeVar("M", bound=Message)


def message(cls: type[M], record: dict[str, Any]) -> M:
    """A stored record as a protobuf message: fields the message lacks are left out."""
    return json_format.ParseDict(record, cls(), ignore_unknown_fields=True)


def deployment(d: dict[str, Any]) -> pb.Deployment:
    return message(
        pb.Deployment, {**d, "placed": sorted(d.get("placed", []), key=lambda r: r["index"])}
    )


def audit_event(e: dict[str, Any]) -> pb.AuditEvent:
    return message(pb.AuditEvent, {**e, "detail_json": json.dumps(e["detail"], sort_keys=True)})


def host_port(address: str, what: str) -> str:
    """The host of HOST:PORT, checked (IP address or a DNS name), or InvalidArgument."""
    try:
        parts = urlsplit(f"//{address}")
        host, port = parts.hostname, parts.port
    except ValueError:
        host, port = None, None
    if not host or not port:
        raise InvalidArgument(f"invalid {what} {address!r}: use HOST:PORT")
    return check_host(host, what)

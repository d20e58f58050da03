"""The Backup RPC's data messages, serialized by jacod itself (one copy instead of three), are
what protobuf would have made of them; and jacod registers every RPC as the generated code
does, Backup's serializer aside."""

from __future__ import annotations

import io
import json
import os
from typing import Any

import grpc
import pytest
from google.protobuf import json_format

from jaco.cli.common import message_dict
from jaco.cli.workloads import write_status_json
from jaco.server.api import add_service
from jaco.server.convert import data_chunk, deployment, serialized_or_message
from jaco.v1 import jaco_pb2 as pb
from jaco.v1 import jaco_pb2_grpc as pb_grpc

PIECE = 32 * 1024  # what etcd sends


@pytest.mark.parametrize(
    "size",
    [1, 127, 128, 129, 16_383, 16_384, PIECE, 1024 * 1024, 1024 * 1024 + PIECE - 1, 2**21 + 5],
)
def test_a_framed_chunk_is_protobuf_s_own_serialization(size: int) -> None:
    data = os.urandom(size)
    pieces = [data[i : i + PIECE] for i in range(0, size, PIECE)]
    wire = data_chunk(pieces, size)
    assert wire == pb.BackupChunk(data=data).SerializeToString()
    parsed = pb.BackupChunk.FromString(wire)
    assert parsed.WhichOneof("part") == "data" and parsed.data == data


def test_messages_are_serialized_and_bytes_passed_on() -> None:
    announce = pb.BackupChunk(snapshot_size=42)
    assert serialized_or_message(announce) == announce.SerializeToString()
    wire = data_chunk([b"abc"], 3)
    assert serialized_or_message(wire) is wire


class _Recorder:
    """Stands in for a grpc.aio.Server to see what a registration hands it."""

    def __init__(self) -> None:
        self.registered: dict[str, dict[str, grpc.RpcMethodHandler]] = {}
        self.generic: list[Any] = []

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        self.generic.extend(handlers)

    def add_registered_method_handlers(self, service: str, handlers: Any) -> None:
        self.registered[service] = handlers


def test_every_rpc_is_registered_as_the_generated_code_registers_it() -> None:
    generated, ours = _Recorder(), _Recorder()
    service = pb_grpc.JacoServicer()
    pb_grpc.add_JacoServicer_to_server(service, generated)
    add_service(ours, service)  # type: ignore[arg-type]
    assert list(ours.registered) == list(generated.registered) == ["jaco.v1.Jaco"]
    theirs, mine = generated.registered["jaco.v1.Jaco"], ours.registered["jaco.v1.Jaco"]
    assert sorted(mine) == sorted(theirs) and "Backup" in mine
    for name, handler in theirs.items():
        made = mine[name]
        assert (made.request_streaming, made.response_streaming) == (
            handler.request_streaming,
            handler.response_streaming,
        ), name
        assert made.request_deserializer == handler.request_deserializer, name
        assert made.unary_unary == handler.unary_unary, name
        assert made.unary_stream == handler.unary_stream, name
        want = serialized_or_message if name == "Backup" else handler.response_serializer
        assert made.response_serializer == want, name
    assert len(ours.generic) == 1 and ours.generic[0].service_name() == "jaco.v1.Jaco"


def _deployments() -> list[dict[str, Any]]:
    """Deployment records as jacod lists them: stored fields, placements, and what a record
    may carry that the message has no field for."""
    full = {
        "name": "web",
        "image": "nginx:1.27",
        "replicas": 3,
        "env": {"A": "1", "B": "", "UNICODE": "ünï ✓"},
        "created_at": "2026-01-01T00:00:00.000+00:00",
        "updated_at": "2026-01-02T00:00:00.000+00:00",
        "placed": [
            {"id": "web-2", "deployment": "web", "index": 2, "ip": "10.0.0.4", "node": "n2"},
            {"id": "web-0", "deployment": "web", "index": 0, "ip": "10.0.0.2", "node": ""},
            {"id": "web-1", "deployment": "web", "index": 1, "ip": "10.0.0.3", "node": "n1"},
        ],
        "spec_version": 4,  # not in the message: left out
    }
    # Every field the messages have is set: a field added to the proto and not to the
    # builder shows here.
    assert {f.name for f in pb.Deployment.DESCRIPTOR.fields} <= set(full)
    assert {f.name for f in pb.Replica.DESCRIPTOR.fields} <= set(full["placed"][0])
    return [
        full,
        {"name": "bare", "image": "x:1", "replicas": 0},
        {**full, "env": {}, "placed": []},
        {"name": "zero", "image": "x:1", "replicas": 1, "placed": [{"id": "z-0", "index": 0}]},
        {"name": "big", "image": "x:1", "replicas": 2**32 - 1, "env": {"K": "v" * 10_000}},
    ]


@pytest.mark.parametrize("record", _deployments(), ids=lambda r: r["name"])
def test_a_deployment_is_built_as_parsing_its_record_would(record: dict[str, Any]) -> None:
    """Status and the deployment listing build one message per deployment: json_format's
    ParseDict cost about 75 µs each (Status of 148 500 deployments took 11.5 s, the drill's
    first call at 10⁶ keys). The message built field by field equals the parsed one."""
    parsed = json_format.ParseDict(
        {**record, "placed": sorted(record.get("placed", []), key=lambda r: r["index"])},
        pb.Deployment(),
        ignore_unknown_fields=True,
    )
    built = deployment(record)
    assert built == parsed
    assert built.SerializeToString(deterministic=True) == parsed.SerializeToString(
        deterministic=True
    )


def test_status_json_is_written_a_page_at_a_time_as_the_whole_reply_would_print() -> None:
    """`jaco status --json` writes each page as it comes (163 500 deployments as one dict
    took 806 MiB): its output is the whole reply as `print_json` printed it, every field
    included, for pages with deployments and for a cluster with none (the keys of each
    deployment in the proto's order, where MessageToDict put the fields at their defaults
    last)."""
    messages = [deployment(r) for r in _deployments()]
    # the builder must cover every message field, or MessageToDict has one it lacks
    assert set(message_dict(messages[0])) == {f.name for f in pb.Deployment.DESCRIPTOR.fields}
    pages = [
        pb.StatusResponse(cluster_id="c1", deployments=messages[:2], next_after="bare"),
        pb.StatusResponse(cluster_id="c1"),
        pb.StatusResponse(cluster_id="c1", deployments=messages[2:]),
    ]
    for given, listed in [(pages, messages), (pages[1:2], [])]:
        out = io.StringIO()
        write_status_json(given, out)
        whole = {"cluster_id": "c1", "deployments": [message_dict(d) for d in listed]}
        assert json.loads(out.getvalue()) == whole
        ordered = json.loads(out.getvalue())  # and laid out as json.dumps lays it out
        assert out.getvalue() == json.dumps(ordered, indent=2) + "\n"

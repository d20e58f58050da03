"""The Backup RPC's data messages, serialized by jacod itself (one copy instead of three), are
what protobuf would have made of them; and jacod registers every RPC as the generated code
does, Backup's serializer aside."""

from __future__ import annotations

import os
from typing import Any

import grpc
import pytest

from jaco.server.convert import data_chunk, serialized_or_message
from jaco.server.daemon import add_service
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

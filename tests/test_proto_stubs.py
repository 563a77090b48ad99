"""The committed gRPC stubs are exactly what `make proto` generates from the .proto."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMMITTED = ROOT / "gateway" / "proto_gen"


def _load_generator():
    spec = importlib.util.spec_from_file_location("proto_generate", ROOT / "proto" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_stubs_match_regenerated(tmp_path: Path) -> None:
    generated = _load_generator().generate(tmp_path)
    assert {p.name for p in generated} == {
        "gateway_pb2.py",
        "gateway_pb2.pyi",
        "gateway_pb2_grpc.py",
    }
    for path in generated:
        committed = COMMITTED / path.relative_to(tmp_path)
        assert committed.read_text() == path.read_text(), f"{committed} is stale: run `make proto`"


def test_stubs_import_inside_the_gateway_package() -> None:
    from gateway.proto_gen.routegate.v1 import gateway_pb2, gateway_pb2_grpc

    assert gateway_pb2.DESCRIPTOR.package == "routegate.v1"
    assert gateway_pb2_grpc.GatewayStub is not None
    # Field numbers are the public contract (issue 8 documents the names); pin them.
    numbers = {f.name: f.number for f in gateway_pb2.GenerateRequest.DESCRIPTOR.fields}
    assert numbers == {
        "prompt": 1, "messages": 2, "max_tokens": 3, "sampling": 4, "backend": 5, "router_threshold": 6,
        "request_id": 7,
    }
    numbers = {f.name: f.number for f in gateway_pb2.GenerateResponse.DESCRIPTOR.fields}
    assert numbers == {
        "text": 1, "token_ids": 2, "logprobs": 3, "backend": 4, "finish_reason": 5, "usage": 6, "routing_score": 7,
    }
    numbers = {f.name: f.number for f in gateway_pb2.Usage.DESCRIPTOR.fields}
    assert numbers == {"prompt_tokens": 1, "completion_tokens": 2, "cached_prompt_tokens": 3}
    methods = [m.name for m in gateway_pb2.DESCRIPTOR.services_by_name["Gateway"].methods]
    assert methods == ["Generate", "Complete", "Route", "Tokenize", "ListBackends"]

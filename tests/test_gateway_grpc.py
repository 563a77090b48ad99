"""End to end through a real gRPC server on 127.0.0.1 with both bundled models and a router.

The server runs in process on its own event loop thread (port 0, so any free port). Each model
is loaded once; the router is a small one trained here on the real MiniLM embedder (a clear
split: arithmetic needs gemma3-270m, greetings do not). The reference outputs are generated with the engine directly, before the server
takes the engine over (from then on only its engine thread may touch it).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_requests import Client as ReflectionClient

from backends.engine import Engine
from backends.loader import load_engines
from backends.sampling_params import SamplingParams
from gateway.client import Client
from gateway.sdk_types import InvalidArgumentError
from gateway.config import BackendConfig, GatewayConfig
from gateway.proto_gen.routegate.v1 import gateway_pb2, gateway_pb2_grpc
from gateway.server_thread import ServerThread

BACKENDS = ("gemma3-270m", "smollm2-135m")
KV_CACHE_BYTES = 64 * 1024 * 1024  # plenty for these tests
PROMPT = "The capital of France is"
CONCURRENT_PROMPTS = ("Once upon a time", "def fibonacci(n):", "Water boils at")
TIMEOUT_S = 120  # per call; generous for a loaded 2-core CI machine

# (prompt, max_tokens) whose greedy completion each backend's engine produces up front.
REFERENCE_CASES = ((PROMPT, 24), *((p, 8) for p in CONCURRENT_PROMPTS))


CONFIG = GatewayConfig(
    host="127.0.0.1", port=0, kv_cache_bytes=KV_CACHE_BYTES,
    backends=tuple(BackendConfig.of(name, f"bundled:{name}") for name in BACKENDS),
)


@dataclass(frozen=True)
class Reference:
    prompt_token_ids: list[int]
    token_ids: list[int]  # the engine's own greedy completion
    text: str  # tokenizer.decode of the completion, end-of-generation ids left out


@pytest.fixture(scope="module")
def engines() -> dict[str, Engine]:
    """Both engines on one KV pool, built exactly as the server builds them."""
    return load_engines([b.engine for b in CONFIG.backends], CONFIG.kv_cache_bytes)


@pytest.fixture(scope="module")
def references(engines: dict[str, Engine]) -> dict[tuple[str, str, int], Reference]:
    refs = {}
    for name, engine in engines.items():
        for prompt, max_tokens in REFERENCE_CASES:
            prompt_ids = engine.tokenizer.encode(prompt)
            ids = engine.generate(prompt_ids, SamplingParams(temperature=0.0, max_tokens=max_tokens))
            text = engine.tokenizer.decode([t for t in ids if t not in engine.tokenizer.eos_token_ids])
            refs[name, prompt, max_tokens] = Reference(prompt_ids, ids, text)
    return refs


CHEAP, STRONG = "smollm2-135m", "gemma3-270m"
EASY = ("Hello there!", "Good morning, how are you?", "Hi, nice to meet you.", "Hey, what's up?",
        "Thanks a lot, have a nice day!", "Good evening to you.", "Hello, my friend.", "Hi again!")
HARD = ("What is 37 * 43?", "Compute 128 + 256 * 3.", "Solve for x: 3x + 7 = 22.", "What is 17 squared?",
        "Integrate x^2 from 0 to 3.", "What is 1024 divided by 32?", "Factor 391.", "What is 99 * 99?")


@pytest.fixture(scope="module")
def router_path(tmp_path_factory) -> str:
    """A small router over both backends, calibrated to send half the prompts to the strong one."""
    from router.datasets import RoutingDataset
    from router.embedder import Embedder
    from router.training import ForestParams, train_router

    prompts = EASY + HARD
    scores = np.array([[1.0, 1.0]] * len(EASY) + [[0.0, 1.0]] * len(HARD))  # (cheap, strong) correct?
    embedder = Embedder()
    data = RoutingDataset(prompts, (CHEAP, STRONG), scores)
    router = train_router(data, embedder.embed(list(prompts)), (CHEAP, STRONG), (1.0, 2.0), embedder,
                          ForestParams(n_estimators=10, max_depth=4, min_samples_leaf=1, random_state=0))
    path = tmp_path_factory.mktemp("router") / "test.router"
    router.save(path)
    return str(path)


@pytest.fixture(scope="module")
def router(router_path: str):
    from router import Router

    return Router.load(router_path)


@pytest.fixture(scope="module")
def server(engines: dict[str, Engine], references, router_path: str) -> Iterator[ServerThread]:
    running = ServerThread(dataclasses.replace(CONFIG, router=router_path))
    running.call(running.server.load_backends(loader=lambda configs, kv_cache_bytes: engines))
    yield running
    running.close()


@pytest.fixture(scope="module")
def channel(server: ServerThread) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        yield ch


@pytest.fixture(scope="module")
def stub(channel: grpc.Channel) -> gateway_pb2_grpc.GatewayStub:
    return gateway_pb2_grpc.GatewayStub(channel)


def _greedy_request(backend: str, max_tokens: int, prompt: str = PROMPT, **kwargs) -> gateway_pb2.GenerateRequest:
    return gateway_pb2.GenerateRequest(
        prompt=prompt, max_tokens=max_tokens, backend=backend,
        sampling=gateway_pb2.SamplingParams(temperature=0.0), **kwargs,
    )


def _collect(stub, request) -> list[gateway_pb2.GenerateResponse]:
    return list(stub.Generate(request, timeout=TIMEOUT_S))


def _wait_idle(server: ServerThread, timeout: float = 30.0) -> None:
    """Until no engine has a request and no KV block is held (cached free blocks may stay)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        engines = server.server.engines.values()
        if not any(e.has_unfinished_requests() for e in engines) and all(e.pool.blocks.num_used == 0 for e in engines):
            return
        time.sleep(0.05)
    raise AssertionError("the server's engines did not return to idle")


def test_health_serving_overall_and_per_backend(channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", *BACKENDS):
        response = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        assert response.status == health_pb2.HealthCheckResponse.SERVING, service


@pytest.mark.parametrize("backend", BACKENDS)
def test_greedy_stream_equals_engine(stub, references, backend: str) -> None:
    ref = references[backend, PROMPT, 24]

    chunks = _collect(stub, _greedy_request(backend, 24))

    assert [t for c in chunks for t in c.token_ids] == ref.token_ids
    assert "".join(c.text for c in chunks) == ref.text
    assert chunks[0].backend == backend
    assert all(c.backend == "" for c in chunks[1:])
    assert all(c.finish_reason == "" for c in chunks[:-1])
    last = chunks[-1]
    assert last.finish_reason == ("length" if len(ref.token_ids) == 24 else "stop")
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (len(ref.prompt_token_ids), len(ref.token_ids))


def test_route_explains_the_decision(server: ServerThread, router) -> None:
    with Client(server.address) as client:
        for text in ("Hello there!", "What is 37 * 43?"):
            expected = router.route(text)
            decision = client.route(text)
            assert (decision.backend, decision.threshold) == (expected.backend, pytest.approx(expected.threshold))
            assert decision.probabilities == pytest.approx(dict(expected.probabilities))
            assert decision.score == pytest.approx(expected.score) and decision.router_latency_ms > 0
        assert client.route("What is 99 * 99?", router_threshold=0.0).backend == CHEAP  # everything clears 0
        assert client.route(messages=[{"role": "user", "content": "Hi again!"}]).backend == router.route("Hi again!").backend
        listing = client.list_backends()
        assert listing.has_router
        assert {b.name: b.cost for b in listing.backends} == {CHEAP: 1.0, STRONG: 2.0}  # the router file's costs


def test_requests_without_a_backend_are_routed(server: ServerThread, stub, router) -> None:
    counted = server.server.metrics.registry.get_sample_value

    def num_decisions() -> float:
        return sum(counted("routegate:routing_decisions_total", {"backend": b}) or 0 for b in BACKENDS)

    before = num_decisions()
    for text in ("Good morning, how are you?", "Compute 128 + 256 * 3."):
        expected = router.route(text)
        chunks = _collect(stub, _greedy_request("", 2, prompt=text))
        assert chunks[0].backend == expected.backend
        assert chunks[-1].routing_score == pytest.approx(expected.score)
        assert all(not c.HasField("routing_score") for c in chunks[:-1])
    named = _collect(stub, _greedy_request(CHEAP, 2))
    assert not named[-1].HasField("routing_score")  # the client chose: no routing
    with Client(server.address) as client:
        with pytest.raises(InvalidArgumentError, match="threshold must be a number in"):
            client.complete("Hello", router_threshold=2.0)
    assert num_decisions() - before == 2


def test_concurrent_streams_on_both_backends(stub, references) -> None:
    cases = [(b, p) for b in BACKENDS for p in CONCURRENT_PROMPTS]
    expected = {(b, p): references[b, p, 8].token_ids for b, p in cases}
    with ThreadPoolExecutor(len(cases)) as pool:
        results = pool.map(lambda case: _collect(stub, _greedy_request(case[0], 8, prompt=case[1])), cases)
        got = {case: [t for c in chunks for t in c.token_ids] for case, chunks in zip(cases, results)}
    assert got == expected


def test_seeded_sampling_is_reproducible(stub) -> None:
    request = gateway_pb2.GenerateRequest(
        prompt=PROMPT, max_tokens=16, backend="smollm2-135m",
        sampling=gateway_pb2.SamplingParams(temperature=0.9, top_k=50, top_p=0.95, seed=1234, ignore_eos=True),
    )
    first = [t for c in _collect(stub, request) for t in c.token_ids]
    second = [t for c in _collect(stub, request) for t in c.token_ids]
    assert len(first) == 16
    assert first == second


def test_reflection_lists_services_and_generic_client_gets_text(server: ServerThread) -> None:
    client = ReflectionClient.get_by_endpoint(f"127.0.0.1:{server.port}")
    assert {"routegate.v1.Gateway", "grpc.health.v1.Health"} <= set(client.service_names)
    for backend in BACKENDS:
        request = {"prompt": PROMPT, "max_tokens": 8, "backend": backend, "sampling": {"temperature": 0}}
        chunks = list(client.request("routegate.v1.Gateway", "Generate", request, timeout=TIMEOUT_S))
        assert chunks[0]["backend"] == backend
        assert "".join(c.get("text", "") for c in chunks).strip()
        assert chunks[-1]["finish_reason"] in ("stop", "length")


def _status_of(stub, request) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as excinfo:
        _collect(stub, request)
    return excinfo.value.code()


@pytest.mark.parametrize(
    "sampling",
    [
        gateway_pb2.SamplingParams(temperature=-1.0),
        gateway_pb2.SamplingParams(top_p=0.0),
        gateway_pb2.SamplingParams(top_p=1.5),
        gateway_pb2.SamplingParams(top_k=-1),
        gateway_pb2.SamplingParams(seed=2**63),
        gateway_pb2.SamplingParams(stop_token_ids=[-5]),
    ],
)
def test_bad_sampling_is_invalid_argument(stub, sampling) -> None:
    request = gateway_pb2.GenerateRequest(prompt=PROMPT, max_tokens=4, sampling=sampling)
    assert _status_of(stub, request) == grpc.StatusCode.INVALID_ARGUMENT


def test_bad_lengths_are_invalid_argument(stub) -> None:
    assert _status_of(stub, _greedy_request("smollm2-135m", 0)) == grpc.StatusCode.INVALID_ARGUMENT
    # SmolLM2 adds no BOS, so an empty prompt has no tokens.
    assert _status_of(stub, _greedy_request("smollm2-135m", 4, prompt="")) == grpc.StatusCode.INVALID_ARGUMENT
    too_long = "hello " * 5000  # far past max_model_len
    assert _status_of(stub, _greedy_request("smollm2-135m", 4, prompt=too_long)) == grpc.StatusCode.INVALID_ARGUMENT


def test_unknown_backend_is_not_found(stub) -> None:
    assert _status_of(stub, _greedy_request("gpt-9", 4)) == grpc.StatusCode.NOT_FOUND


def test_cancel_mid_stream_aborts_the_request(server: ServerThread, stub) -> None:
    request = gateway_pb2.GenerateRequest(
        prompt=PROMPT, max_tokens=500, backend="smollm2-135m",
        sampling=gateway_pb2.SamplingParams(temperature=0.0, ignore_eos=True),
    )
    call = stub.Generate(request, timeout=TIMEOUT_S)
    for _ in range(3):
        next(call)
    call.cancel()
    assert call.code() == grpc.StatusCode.CANCELLED
    _wait_idle(server)


def test_deadline_aborts_the_request(server: ServerThread, stub) -> None:
    request = gateway_pb2.GenerateRequest(
        prompt=PROMPT, max_tokens=1000, backend="gemma3-270m",
        sampling=gateway_pb2.SamplingParams(temperature=0.0, ignore_eos=True),
    )
    with pytest.raises(grpc.RpcError) as excinfo:
        list(stub.Generate(request, timeout=1.0))
    assert excinfo.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    _wait_idle(server)


def test_request_id_in_flight_is_already_exists(server: ServerThread, stub) -> None:
    request = gateway_pb2.GenerateRequest(
        prompt=PROMPT, max_tokens=500, backend="smollm2-135m", request_id="same-id",
        sampling=gateway_pb2.SamplingParams(temperature=0.0, ignore_eos=True),
    )
    first = stub.Generate(request, timeout=TIMEOUT_S)
    next(first)
    assert _status_of(stub, request) == grpc.StatusCode.ALREADY_EXISTS
    first.cancel()
    _wait_idle(server)
    # Once the first is gone the id is free again.
    assert _collect(stub, _greedy_request("smollm2-135m", 2, request_id="same-id"))[-1].finish_reason


def test_router_file_must_match_the_backends_and_config_costs_override(router_path: str) -> None:
    from gateway.routing import load_router

    with pytest.raises(ValueError, match=f"routes to backend\\(s\\) {STRONG} that are not configured"):
        load_router(router_path, {}, [CHEAP])
    assert load_router(router_path, {CHEAP: 5.0}, BACKENDS).backends == (STRONG, CHEAP)  # cheapest first

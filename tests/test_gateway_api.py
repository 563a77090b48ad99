"""The gateway's API beyond Generate, through the SDK, on a real server on 127.0.0.1.

One SmolLM2 server with API keys, a small bounded queue and a metrics endpoint; references come
from the engine itself before the server takes it over. A second, LiteLLM-only gateway (nothing
to load) shows UNAVAILABLE while loading and the SDK's retries.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
import urllib.request
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_requests import Client as ReflectionClient

from backends.engine import Engine
from backends.loader import load_engines
from backends.sampling_params import SamplingParams
from gateway import sdk_types as t
from gateway.auth import KeyChecker, bearer_key
from gateway.client import AsyncClient, Client
from gateway.config import BackendConfig, GatewayConfig
from gateway.server_thread import ServerThread

BACKEND = "smollm2-135m"
KEYS = ("key-1", "key-2")
PROMPT = "The capital of France is"
CHAT = [{"role": "user", "content": "What is the capital of France?"}]
MAX_PENDING = 2
CONFIG = GatewayConfig(
    host="127.0.0.1", port=0, kv_cache_bytes=64 * 1024 * 1024, api_keys=KEYS,
    max_pending_requests=MAX_PENDING, metrics_port=0,
    backends=(BackendConfig.of(BACKEND, f"bundled:{BACKEND}", cost=1.5),),
)
LONG = {"max_tokens": 300, "ignore_eos": True, "temperature": 0.0}  # runs until cancelled


@pytest.fixture(scope="module")
def engine() -> Engine:
    return load_engines([CONFIG.backends[0].engine], CONFIG.kv_cache_bytes)[BACKEND]


@pytest.fixture(scope="module")
def references(engine: Engine) -> dict[str, list[int]]:
    chat_ids = engine.tokenizer.encode(engine.tokenizer.apply_chat_template(CHAT), add_special=False)
    greedy = SamplingParams(temperature=0.0, max_tokens=12)
    return {
        "prompt_ids": engine.tokenizer.encode(PROMPT),
        "completion": engine.generate(engine.tokenizer.encode(PROMPT), greedy),
        "chat_ids": chat_ids,
        "chat_completion": engine.generate(chat_ids, greedy),
    }


@pytest.fixture(scope="module")
def server(engine: Engine, references) -> Iterator[ServerThread]:
    running = ServerThread(CONFIG)
    running.call(running.server.load_backends(loader=lambda configs, kv_cache_bytes: {BACKEND: engine}))
    yield running
    running.close()


@pytest.fixture(scope="module")
def client(server: ServerThread) -> Iterator[Client]:
    with Client(server.address, api_key=KEYS[1], timeout=120) as c:
        yield c


def _wait_idle(engine: Engine, timeout: float = 30.0) -> None:
    """Until the engine has no request and the pool holds no block (cached free ones may stay)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not engine.has_unfinished_requests() and engine.pool.blocks.num_used == 0:
            return
        time.sleep(0.05)
    raise AssertionError("the engine did not return to idle")


# -- auth ---------------------------------------------------------------------------------------


def test_bearer_key_parsing_and_key_checker() -> None:
    assert bearer_key([("authorization", "Bearer abc")]) == "abc"
    assert bearer_key([("authorization", "bearer  abc ")]) == "abc"
    assert bearer_key([("authorization", "Basic abc")]) is None
    assert bearer_key([("x-other", "Bearer abc")]) is None
    checker = KeyChecker(KEYS)
    assert [checker.accepts(k) for k in ("key-1", "key-2", "key-3", "key-", "", None)] == [
        True, True, False, False, False, False,
    ]


def test_calls_without_a_valid_key_are_unauthenticated(server: ServerThread) -> None:
    for api_key in (None, "wrong"):
        with Client(server.address, api_key=api_key) as anonymous:
            with pytest.raises(t.UnauthenticatedError):
                anonymous.list_backends()
            with pytest.raises(t.UnauthenticatedError):
                list(anonymous.generate(PROMPT, max_tokens=2))


def test_health_and_reflection_need_no_key(server: ServerThread) -> None:
    with grpc.insecure_channel(server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", BACKEND):
            status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status
            assert status == health_pb2.HealthCheckResponse.SERVING
    reflection = ReflectionClient.get_by_endpoint(server.address)
    assert "routegate.v1.Gateway" in reflection.service_names


def test_reflection_client_with_a_key_calls_complete(server: ServerThread, references) -> None:
    reflection = ReflectionClient.get_by_endpoint(server.address)
    request = {"prompt": PROMPT, "max_tokens": 12, "sampling": {"temperature": 0}}
    metadata = [("authorization", f"Bearer {KEYS[0]}")]
    response = reflection.request("routegate.v1.Gateway", "Complete", request, timeout=120, metadata=metadata)
    assert [int(x) for x in response["token_ids"]] == references["completion"]


# -- the SDK -----------------------------------------------------------------------------------


def test_generate_complete_and_tokenize_equal_the_engine(client: Client, references) -> None:
    chunks = list(client.generate(PROMPT, max_tokens=12, temperature=0.0))
    completion = client.complete(PROMPT, max_tokens=12, temperature=0.0)

    assert [tok for c in chunks for tok in c.token_ids] == references["completion"]
    assert list(completion.token_ids) == references["completion"]
    assert completion.text == "".join(c.text for c in chunks)
    assert (chunks[0].backend, completion.backend) == (BACKEND, BACKEND)
    assert completion.usage == t.Usage(len(references["prompt_ids"]), 12, completion.usage.cached_prompt_tokens)
    assert completion.routing_score is None  # the backend came from the default, not a router
    tokenized = client.tokenize(PROMPT)
    assert (list(tokenized.token_ids), tokenized.backend, tokenized.max_model_len) == (
        references["prompt_ids"], BACKEND, 2048,
    )


def test_chat_messages_use_the_chat_template(client: Client, references) -> None:
    assert list(client.tokenize(messages=CHAT, backend=BACKEND).token_ids) == references["chat_ids"]
    completion = client.complete(messages=CHAT, max_tokens=12, temperature=0.0)
    assert list(completion.token_ids) == references["chat_completion"]
    assert completion.usage.prompt_tokens == len(references["chat_ids"])


def test_logprobs_and_stop_strings(client: Client, references) -> None:
    completion = client.complete(PROMPT, max_tokens=12, temperature=0.0, logprobs=3)
    assert [lp.token_id for lp in completion.logprobs] == references["completion"]
    for lp in completion.logprobs:
        assert len(lp.top) == 3
        assert lp.top[0][0] == lp.token_id  # greedy: the chosen token is the most likely
        assert lp.logprob == pytest.approx(lp.top[0][1])
    full = completion.text
    stop = full.strip().split()[1]  # a word from the middle of the greedy text
    cut = client.complete(PROMPT, max_tokens=12, temperature=0.0, stop=[stop])
    assert cut.finish_reason == "stop"
    assert cut.text == full[: full.index(stop)]


def test_list_backends(client: Client) -> None:
    listing = client.list_backends()
    assert listing.default_backend == BACKEND and listing.has_router is False
    assert listing.backends == (
        t.BackendInfo(BACKEND, "full_precision", f"bundled:{BACKEND}", "float32", 2048, 1.5, "serving"),
    )


def test_async_client(server: ServerThread, references) -> None:
    async def run() -> tuple[list[int], t.Completion]:
        async with AsyncClient(server.address, api_key=KEYS[0]) as aclient:
            streamed = [tok async for c in aclient.generate(PROMPT, max_tokens=12, temperature=0.0) for tok in c.token_ids]
            return streamed, await aclient.complete(PROMPT, max_tokens=12, temperature=0.0)

    streamed, completion = asyncio.run(run())
    assert streamed == list(completion.token_ids) == references["completion"]


def test_unknown_sampling_keyword_is_a_type_error(client: Client) -> None:
    with pytest.raises(TypeError, match="unknown sampling parameter"):
        client.complete(PROMPT, temprature=0.0)


# -- status codes ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"min_p": 2.0}, {"temperature": -1.0}, {"max_tokens": 0}, {"presence_penalty": 3.0},
        {"logprobs": 21}, {"logit_bias": {5: 1000.0}}, {"min_tokens": 20, "max_tokens": 4},
        {"stop": [""]}, {"router_threshold": float("nan")}, {"messages": CHAT},
        {"request_id": "x" * 300},
    ],
)
def test_invalid_arguments(client: Client, kwargs: dict) -> None:
    with pytest.raises(t.InvalidArgumentError):
        client.complete(PROMPT, **kwargs)  # PROMPT with messages = both set: invalid too


def test_prompt_longer_than_the_context_is_invalid(client: Client) -> None:
    with pytest.raises(t.InvalidArgumentError, match="context of 2048 tokens"):
        client.complete("hello " * 3000, max_tokens=2)


def test_unknown_backend_is_not_found(client: Client) -> None:
    with pytest.raises(t.NotFoundError):
        client.complete(PROMPT, backend="gpt-9")
    with pytest.raises(t.NotFoundError):
        client.tokenize(PROMPT, backend="gpt-9")


def test_route_without_a_router_is_failed_precondition(client: Client) -> None:
    with pytest.raises(t.FailedPreconditionError, match="no router"):
        client.route(PROMPT)


def test_full_queue_is_resource_exhausted(server: ServerThread, client: Client, engine: Engine) -> None:
    streams = [client.generate(PROMPT, **LONG) for _ in range(MAX_PENDING)]
    for stream in streams:
        next(stream)  # both admitted and generating
    with pytest.raises(t.ResourceExhaustedError, match="max_pending_requests"):
        client.complete(PROMPT, max_tokens=2)
    for stream in streams:
        stream.close()  # cancels the call
    _wait_idle(engine)
    assert client.complete(PROMPT, max_tokens=2).finish_reason == "length"


def test_breaking_out_of_generate_frees_the_kv_blocks(client: Client, engine: Engine) -> None:
    for i, _ in enumerate(client.generate(PROMPT, **LONG)):
        if i == 3:
            break
    _wait_idle(engine)


def test_timeout_is_deadline_exceeded_and_frees_the_kv_blocks(client: Client, engine: Engine) -> None:
    with pytest.raises(t.DeadlineExceededError):
        client.complete(PROMPT, timeout=1.0, **LONG)
    with pytest.raises(t.DeadlineExceededError):
        list(client.generate(PROMPT, timeout=1.0, **LONG))
    _wait_idle(engine)


# -- metrics -----------------------------------------------------------------------------------


def _scrape(server: ServerThread) -> dict[str, float]:
    body = urllib.request.urlopen(f"http://127.0.0.1:{server.server.metrics_port}/metrics", timeout=10).read().decode()
    samples = {}
    for line in body.splitlines():
        match = re.match(r"^(routegate:\S+?)(\{.*\})? (\S+)$", line)
        if match:
            samples[match.group(1) + (match.group(2) or "")] = float(match.group(3))
    return samples


def test_metrics_endpoint(server: ServerThread, client: Client, engine: Engine) -> None:
    label = f'{{backend="{BACKEND}"}}'
    before = _scrape(server)
    for _ in range(2):
        client.complete(PROMPT, max_tokens=3, temperature=0.0)
    _wait_idle(engine)
    deadline = time.monotonic() + 10
    while True:  # the engine thread refreshes its snapshot when it goes idle
        after = _scrape(server)
        queries = f'routegate:prefix_cache_queries_total{{backend="{BACKEND}",tier="local"}}'
        if after.get(queries, 0) > before.get(queries, 0) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    for name in ("e2e_request_latency_seconds", "time_to_first_token_seconds", "request_queue_time_seconds"):
        key = f"routegate:{name}_count{label}"
        assert after[key] - before.get(key, 0) == 2, name
    itl = f"routegate:inter_token_latency_seconds_count{label}"
    assert after[itl] - before.get(itl, 0) == 4  # 3 tokens a request: 2 gaps each
    assert after[queries] > before.get(queries, 0)
    assert after[f"routegate:num_requests_running{label}"] == 0
    assert after["routegate:kv_cache_usage_perc"] == 0.0


# -- loading, retries, draining ----------------------------------------------------------------


def test_unavailable_while_loading_and_the_sdk_retries() -> None:
    remote = BackendConfig.of("remote", "openai/none", engine="litellm", api_base="http://127.0.0.1:9")
    loading = ServerThread(GatewayConfig(host="127.0.0.1", port=0, backends=(remote,)))
    try:
        with Client(loading.address, max_retries=0) as impatient:
            with pytest.raises(t.UnavailableError, match="loading"):
                impatient.tokenize(PROMPT)
            assert impatient.list_backends().backends[0].status == "not_serving"
        threading.Timer(0.5, lambda: loading.call(loading.server.load_backends())).start()
        with Client(loading.address, max_retries=20, backoff_s=0.05, max_backoff_s=0.2) as patient:
            # Retried through UNAVAILABLE until loaded; then the LiteLLM backend has no tokenizer.
            with pytest.raises(t.FailedPreconditionError, match="no local tokenizer"):
                patient.tokenize(PROMPT)
    finally:
        loading.close()


def test_draining_refuses_new_requests_and_finishes_in_flight_ones(server: ServerThread, client: Client) -> None:
    """Runs last: it stops the module's server."""
    stream = client.generate(PROMPT, max_tokens=40, ignore_eos=True, temperature=0.0)
    first = next(stream)
    stopping = asyncio.run_coroutine_threadsafe(server.server.stop(grace=60), server.loop)
    deadline = time.monotonic() + 10
    while not server.server.service.draining and time.monotonic() < deadline:
        time.sleep(0.01)
    with Client(server.address, api_key=KEYS[0], max_retries=0) as other:
        with pytest.raises(t.UnavailableError):
            other.complete(PROMPT, max_tokens=2)
    rest = list(stream)
    assert len(first.token_ids) + sum(len(c.token_ids) for c in rest) == 40
    assert rest[-1].finish_reason == "length"
    stopping.result(60)

"""LiteLLM on both sides of the gateway.

(a) A `litellm` backend forwards to an OpenAI-compatible HTTP server that this test starts on
    127.0.0.1 (stdlib http.server; it answers a fixed, checkable function of the request and
    records what it was sent).
(b) The SDK's LiteLLM provider: litellm.completion(model="routegate/...") and its streaming and
    async forms go through a real gateway serving SmolLM2 (and the LiteLLM backend behind it).
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import litellm
import pytest

from gateway import sdk_types as t
from gateway.client import Client
from gateway.config import BackendConfig, GatewayConfig
from gateway.litellm_provider import register
from gateway.server_thread import ServerThread

LOCAL = "smollm2-135m"
KEY_ENV = "ROUTEGATE_TEST_REMOTE_KEY"
CHAT = [{"role": "user", "content": "Name a colour."}]


def remote_words(content: str) -> list[str]:
    """What the fake server answers: the request's last message, words reversed, one per token."""
    return [f"{w} " for w in reversed(content.split())]


class FakeOpenAI(BaseHTTPRequestHandler):
    """POST /v1/chat/completions, streaming (SSE) or not; records each request body and auth."""

    received: list[tuple[dict, str]] = []

    def log_message(self, *args: object) -> None:  # keep pytest output clean
        pass

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        FakeOpenAI.received.append((body, self.headers.get("Authorization", "")))
        if self.path != "/v1/chat/completions":
            self.send_error(404)
            return
        words = remote_words(body["messages"][-1]["content"])
        limit = body.get("max_tokens") or body.get("max_completion_tokens") or len(words)
        finish = "length" if len(words) > limit else "stop"
        words = words[:limit]
        usage = {"prompt_tokens": 7, "completion_tokens": len(words), "total_tokens": 7 + len(words)}
        base = {"id": "cmpl-1", "created": 1, "model": body["model"]}
        if not body.get("stream"):
            message = {"role": "assistant", "content": "".join(words)}
            self._json({**base, "object": "chat.completion", "usage": usage,
                        "choices": [{"index": 0, "message": message, "finish_reason": finish}]})
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        deltas = [{"delta": {"role": "assistant", "content": w}, "finish_reason": None} for w in words]
        deltas.append({"delta": {}, "finish_reason": finish})
        for delta in deltas:
            self._event({**base, "object": "chat.completion.chunk", "choices": [{"index": 0, **delta}]})
        if body.get("stream_options", {}).get("include_usage"):
            self._event({**base, "object": "chat.completion.chunk", "choices": [], "usage": usage})
        self.wfile.write(b"data: [DONE]\n\n")

    def _event(self, data: dict) -> None:
        self.wfile.write(f"data: {json.dumps(data)}\n\n".encode())
        self.wfile.flush()

    def _json(self, data: dict) -> None:
        payload = json.dumps(data).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens here once the socket is closed


@pytest.fixture(scope="module")
def fake_openai() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), FakeOpenAI)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_port}/v1"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def gateway(fake_openai: str) -> Iterator[ServerThread]:
    mp = pytest.MonkeyPatch()
    mp.setenv(KEY_ENV, "sk-test-123")
    config = GatewayConfig(host="127.0.0.1", port=0, kv_cache_bytes=32 * 1024 * 1024, backends=(
        BackendConfig.of(LOCAL, f"bundled:{LOCAL}"),
        BackendConfig.of("remote", "openai/fake-model", engine="litellm", api_base=fake_openai,
                         api_key_env=KEY_ENV, cost=10.0),
        BackendConfig.of("down", "openai/fake-model", engine="litellm", timeout_s=10,
                         api_base=f"http://127.0.0.1:{_closed_port()}/v1", api_key_env=KEY_ENV),
    ))
    running = ServerThread(config)
    running.call(running.server.load_backends())
    yield running
    running.close()
    mp.undo()


@pytest.fixture(scope="module")
def client(gateway: ServerThread) -> Iterator[Client]:
    with Client(gateway.address, max_retries=0) as c:
        yield c


# -- (a) the litellm backend ---------------------------------------------------------------------


def test_litellm_backend_forwards_the_request(client: Client) -> None:
    FakeOpenAI.received.clear()
    prompt = "one two three four five six"
    completion = client.complete(prompt, backend="remote", max_tokens=4, temperature=0.5, top_p=0.9, seed=7,
                                 stop=["zzz"], presence_penalty=0.5)

    assert completion.text == "six five four three "
    assert (completion.backend, completion.finish_reason, completion.token_ids) == ("remote", "length", ())
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (7, 4)
    (body, auth), = FakeOpenAI.received
    assert auth == "Bearer sk-test-123"
    assert body["model"] == "fake-model" and body["stream"] is True
    assert body["messages"] == [{"role": "user", "content": prompt}]
    assert (body["max_tokens"], body["temperature"], body["top_p"], body["seed"], body["stop"],
            body["presence_penalty"]) == (4, 0.5, pytest.approx(0.9), 7, ["zzz"], 0.5)


def test_litellm_backend_streams_chat(client: Client) -> None:
    chunks = list(client.generate(messages=CHAT, backend="remote", max_tokens=16))
    assert chunks[0].backend == "remote"
    assert "".join(c.text for c in chunks) == "".join(remote_words(CHAT[-1]["content"]))
    assert chunks[-1].finish_reason == "stop"
    assert [c.finish_reason for c in chunks[:-1]] == [""] * (len(chunks) - 1)


def test_litellm_backend_statuses(client: Client) -> None:
    with pytest.raises(t.InvalidArgumentError, match="does not support top_k"):
        client.complete("hi", backend="remote", top_k=5)
    with pytest.raises(t.FailedPreconditionError, match="no local tokenizer"):
        client.tokenize("hi", backend="remote")
    with pytest.raises(t.UnavailableError, match="remote backend unavailable"):
        client.complete("hi", backend="down")
    listing = {b.name: b for b in client.list_backends().backends}
    assert (listing["remote"].engine, listing["remote"].model, listing["remote"].cost) == ("litellm", "openai/fake-model", 10.0)


# -- (b) the LiteLLM provider ------------------------------------------------------------------


@pytest.fixture(scope="module")
def provider(gateway: ServerThread) -> None:
    register(gateway.address)


def test_provider_completion_and_streaming_match_the_sdk(provider, client: Client) -> None:
    expected = client.complete(messages=CHAT, backend=LOCAL, max_tokens=8, temperature=0.0)

    response = litellm.completion(model=f"routegate/{LOCAL}", messages=CHAT, max_tokens=8, temperature=0.0)
    assert response.choices[0].message.content == expected.text
    assert response.choices[0].finish_reason == expected.finish_reason
    assert (response.usage.prompt_tokens, response.usage.completion_tokens) == (
        expected.usage.prompt_tokens, expected.usage.completion_tokens)

    parts = litellm.completion(model="routegate/auto", messages=CHAT, max_tokens=8, temperature=0.0, stream=True)
    assert "".join(p.choices[0].delta.content or "" for p in parts) == expected.text  # auto = the default backend


def test_provider_async_forms(provider, client: Client) -> None:
    expected = client.complete(messages=CHAT, backend=LOCAL, max_tokens=8, temperature=0.0).text

    async def run() -> tuple[str, str]:
        response = await litellm.acompletion(model=f"routegate/{LOCAL}", messages=CHAT, max_tokens=8, temperature=0.0)
        stream = await litellm.acompletion(model=f"routegate/{LOCAL}", messages=CHAT, max_tokens=8,
                                           temperature=0.0, stream=True)
        streamed = "".join([p.choices[0].delta.content or "" async for p in stream])
        return response.choices[0].message.content, streamed

    assert asyncio.run(run()) == (expected, expected)


def test_provider_reaches_the_litellm_backend_behind_the_gateway(provider) -> None:
    response = litellm.completion(model="routegate/remote", messages=CHAT)
    assert response.choices[0].message.content == "".join(remote_words(CHAT[-1]["content"]))


def test_provider_errors_are_litellm_errors(provider) -> None:
    with pytest.raises(litellm.exceptions.NotFoundError):
        litellm.completion(model="routegate/gpt-9", messages=CHAT)

"""Generated requests for the fuzz case: malformed fields, extreme values, huge and empty prompts,
invalid UTF-8 and bytes that are no protobuf at all. Deterministic for a given seed."""

from __future__ import annotations

import random

from gateway.proto_gen.routegate.v1 import gateway_pb2 as pb

FLOATS = (0.0, -0.0, 1.0, -1.0, 0.5, 2.0, 1e-45, 3.4e38, -3.4e38, float("inf"), float("-inf"), float("nan"), 101.0)
INTS = (0, 1, 2, -1, 16, 20, 21, 100, 2**31 - 1, -(2**31))
TEXTS = ("", " ", "Hello", "The capital of France is", "🙂" * 50, "日本語のテキスト", "\x00\x01\x02", "a" * 5000,
         "<|im_end|>", "<start_of_turn>user", "\n" * 200, "{{ raise('x') }}", "{% for x in range(10**9) %}")
BACKENDS = ("", "", "gemma3-270m", "smollm2-135m", "nope", "../etc/passwd", "x" * 300)
METHODS = ("Complete", "Generate", "Tokenize", "Route", "ListBackends")


def _text(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.02:
        return "word " * rng.randint(2_000, 40_000)  # longer than any context
    if roll < 0.1:
        return "".join(chr(rng.randint(32, 0x2FFFF)) for _ in range(rng.randint(1, 200))
                       ).encode("utf-8", "ignore").decode("utf-8", "ignore")
    return rng.choice(TEXTS)


def _sampling(rng: random.Random) -> pb.SamplingParams:
    s = pb.SamplingParams()
    for name in ("temperature", "top_p", "repetition_penalty", "min_p", "presence_penalty", "frequency_penalty"):
        if rng.random() < 0.3:
            setattr(s, name, rng.choice(FLOATS))
    for name in ("top_k", "min_tokens", "logprobs"):
        if rng.random() < 0.2:
            setattr(s, name, rng.choice(INTS))
    if rng.random() < 0.2:
        s.seed = rng.choice((0, 1, 2**63 - 1, 2**63, 2**64 - 1))
    if rng.random() < 0.1:
        s.stop.extend(rng.choice(TEXTS) for _ in range(rng.choice((1, 3, 17))))
    if rng.random() < 0.1:
        s.stop_token_ids.extend(rng.choice(INTS) for _ in range(rng.randint(1, 4)))
    if rng.random() < 0.1:
        for _ in range(rng.randint(1, 5)):
            s.logit_bias[rng.choice(INTS)] = rng.choice(FLOATS)
    s.ignore_eos = rng.random() < 0.1
    s.adaptive_temperature = rng.random() < 0.1
    return s


def _messages(rng: random.Random) -> list[pb.ChatMessage]:
    roles = ("user", "assistant", "system", "", "tool", "x" * 100)
    return [pb.ChatMessage(role=rng.choice(roles), content=_text(rng)) for _ in range(rng.randint(1, 4))]


def _generate_request(rng: random.Random) -> pb.GenerateRequest:
    request = pb.GenerateRequest(backend=rng.choice(BACKENDS), sampling=_sampling(rng))
    if rng.random() < 0.25:
        request.messages.extend(_messages(rng))
    if rng.random() < 0.85:
        request.prompt = _text(rng)
    # Mostly short answers: the fuzz case is about parsing and validation, not throughput.
    request.max_tokens = rng.choice((1, 2, 4, 4, 8, 0, -1, -(2**31))) if rng.random() < 0.97 else rng.choice((2**31 - 1, 64))
    if rng.random() < 0.1:
        request.router_threshold = rng.choice(FLOATS)
    if rng.random() < 0.1:
        request.request_id = rng.choice(("dup", "", "x" * 1000, "🙂"))
    return request


def _invalid_utf8(message: bytes, rng: random.Random) -> bytes:
    """The message with a `prompt` (field 1, a string) whose bytes are not UTF-8."""
    bad = rng.choice((b"\xff\xfe", b"\xc3\x28", b"abc\xed\xa0\x80", b"\xf0\x28\x8c\x28"))
    return b"\x0a" + bytes([len(bad)]) + bad + message


def fuzz_case(rng: random.Random) -> tuple[str, bytes]:
    """(method name, serialized request bytes) for one generated request."""
    method = rng.choice(METHODS)
    if method in ("Complete", "Generate"):
        message = _generate_request(rng)
    elif method == "Tokenize":
        message = pb.TokenizeRequest(prompt=_text(rng), backend=rng.choice(BACKENDS))
        if rng.random() < 0.3:
            message.messages.extend(_messages(rng))
    elif method == "Route":
        message = pb.RouteRequest(prompt=_text(rng))
        if rng.random() < 0.3:
            message.router_threshold = rng.choice(FLOATS)
    else:
        message = pb.ListBackendsRequest()
    data = message.SerializeToString()
    roll = rng.random()
    if roll < 0.05:
        data = _invalid_utf8(data, rng)
    elif roll < 0.08:
        data = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 64)))  # not a protobuf at all
    elif roll < 0.10:
        data = data[: rng.randint(0, max(0, len(data) - 1))]  # truncated
    return method, data

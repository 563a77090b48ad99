"""A backend that raises inside a step fails only the request that causes it: the rest of the
batch gets exactly the tokens it gets alone, the failed request reports an error, and the pool
returns to idle. Through the gateway the failed request ends with INTERNAL."""

from __future__ import annotations

import pytest

from backends.engine_config import EngineConfig
from backends.loader import load_engine
from backends.outputs import FinishReason
from backends.sampling_params import SamplingParams

POISON_TEXT = " zebra"  # the injected fault fires on any batch holding this prompt's token
GOOD_PROMPTS = ("The capital of France is", "One, two, three,", "def add(a, b):")


@pytest.fixture(scope="module")
def engine():
    return load_engine(EngineConfig(name="smollm2-135m", model="bundled:smollm2-135m", max_model_len=256),
                       kv_cache_bytes=32 << 20)


def inject_fault(engine, poison_id: int) -> None:
    """Make the real model raise whenever a batch contains `poison_id` (a fault, not a mock:
    everything else runs the real forward pass)."""
    model = engine.runner.model
    forward = model.forward

    def faulty(input_ids, *args, **kwargs):
        if poison_id in input_ids.tolist():
            raise RuntimeError("injected fault")
        return forward(input_ids, *args, **kwargs)

    model.forward = faulty


def test_only_the_faulty_request_fails(engine):
    params = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
    good = [engine.tokenizer.encode(p) for p in GOOD_PROMPTS]
    expected = [engine.generate(ids, params) for ids in good]
    (poison_id,) = engine.tokenizer.encode(POISON_TEXT, add_special=False)
    assert all(poison_id not in ids + out for ids, out in zip(good, expected))
    inject_fault(engine, poison_id)
    try:
        bad_id = engine.add_request(engine.tokenizer.encode("A" + POISON_TEXT), params)
        good_ids = [engine.add_request(ids, params) for ids in good]
        got = {rid: [] for rid in good_ids}
        failures = []
        while engine.has_unfinished_requests():
            for out in engine.step():
                if out.request_id == bad_id:
                    failures.append(out)
                else:
                    assert out.error is None
                    got[out.request_id].extend(out.new_token_ids)
        assert [got[rid] for rid in good_ids] == expected
        (failure,) = failures
        assert failure.finish_reason is FinishReason.ABORTED
        assert failure.error == "RuntimeError: injected fault"
        assert engine.pool.blocks.num_used == 0
    finally:
        del engine.runner.model.forward  # back to the class's forward


def test_gateway_answers_internal_for_the_failed_request_only(engine):
    import grpc

    from gateway.client import Client
    from gateway.config import BackendConfig, GatewayConfig
    from gateway.sdk_types import InternalError
    from gateway.server_thread import ServerThread

    (poison_id,) = engine.tokenizer.encode(POISON_TEXT, add_special=False)
    inject_fault(engine, poison_id)
    config = GatewayConfig(port=0, router="", backends=(BackendConfig.of("smollm2-135m", "bundled:smollm2-135m"),))
    running = ServerThread(config)
    try:
        running.call(running.server.load_backends(loader=lambda configs, kv_cache_bytes: {"smollm2-135m": engine}))
        with Client(running.address, timeout=60) as client:
            with pytest.raises(InternalError) as failed:
                client.complete("A" + POISON_TEXT, max_tokens=4)
            assert failed.value.code is grpc.StatusCode.INTERNAL
            ok = client.complete(GOOD_PROMPTS[0], max_tokens=4, temperature=0.0)
            assert ok.finish_reason == "length" and len(ok.token_ids) == 4
    finally:
        running.close()
        del engine.runner.model.forward

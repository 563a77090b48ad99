"""`routegate serve` as a real process: starts, serves, drains on SIGTERM, exits 0."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.proto_gen.routegate.v1 import gateway_pb2, gateway_pb2_grpc

ROUTEGATE = Path(sys.executable).with_name("routegate")
CONFIG = """
host = "127.0.0.1"
port = 0
grace_period_s = 60
kv_cache_bytes = 67108864

[[backends]]
name = "smollm2-135m"
model = "bundled:smollm2-135m"
"""


def _read_port(process: subprocess.Popen, log: list[str], timeout: float = 60) -> int:
    """The port from the "listening on HOST:PORT" log line; the log keeps being collected."""
    found = threading.Event()
    port: list[int] = []

    def pump() -> None:
        for line in process.stderr:
            log.append(line)
            match = re.search(r"listening on [\d.]+:(\d+)", line)
            if match and not found.is_set():
                port.append(int(match.group(1)))
                found.set()

    threading.Thread(target=pump, daemon=True).start()
    assert found.wait(timeout), "".join(log)
    return port[0]


def _wait_serving(channel: grpc.Channel, timeout: float = 300) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status
        if status == health_pb2.HealthCheckResponse.SERVING:
            return
        time.sleep(0.2)
    raise AssertionError("the gateway never became SERVING")


def test_serve_generates_and_drains_on_sigterm(tmp_path: Path) -> None:
    config = tmp_path / "routegate.toml"
    config.write_text(CONFIG)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(
        [str(ROUTEGATE), "serve", "--config", str(config)],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env,
    )
    log: list[str] = []
    try:
        port = _read_port(process, log)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            _wait_serving(channel)
            stub = gateway_pb2_grpc.GatewayStub(channel)
            request = gateway_pb2.GenerateRequest(
                prompt="The capital of France is", max_tokens=16,
                sampling=gateway_pb2.SamplingParams(temperature=0.0, ignore_eos=True),
            )
            call = stub.Generate(request, timeout=120)
            first = next(call)
            assert first.backend == "smollm2-135m"
            process.send_signal(signal.SIGTERM)  # the stream in flight must still complete
            rest = list(call)
            assert rest[-1].finish_reason == "length"
            assert len(first.token_ids) + sum(len(c.token_ids) for c in rest) == 16
        assert process.wait(timeout=60) == 0, "".join(log)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

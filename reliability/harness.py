"""Processes the reliability suite runs against: a private redis-server and `routegate serve`
subprocesses on free ports of 127.0.0.1, with their health, memory and metrics."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from gateway.health_probe import check
from tests.redis_server import RedisServer, free_port

ROOT = Path(__file__).resolve().parents[1]
ROUTEGATE = Path(sys.executable).with_name("routegate")

__all__ = ["Gateway", "RedisServer", "free_port"]


class Gateway:
    """`routegate serve` on a free port with the bundled backends (and a Redis URL, if given)."""

    def __init__(self, redis_url: str = "", kv_cache_bytes: int = 256 << 20, extra_toml: str = "") -> None:
        self.port, self.metrics_port = free_port(), free_port()
        self.address = f"127.0.0.1:{self.port}"
        self._dir = tempfile.TemporaryDirectory(prefix="routegate-reliability-")
        config = Path(self._dir.name) / "routegate.toml"
        lines = [f"port = {self.port}", f"metrics_port = {self.metrics_port}", f"kv_cache_bytes = {kv_cache_bytes}"]
        if redis_url:
            lines.append(f'redis_url = "{redis_url}"')
        config.write_text("\n".join(lines) + "\n" + extra_toml)
        self._log = open(Path(self._dir.name) / "server.log", "wb")
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
        self.process = subprocess.Popen([str(ROUTEGATE), "serve", "--config", str(config), "--log-level", "warning"],
                                        stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)

    def wait_serving(self, timeout_s: float = 300) -> None:
        deadline = time.monotonic() + timeout_s
        while check(self.address, timeout_s=2) != "SERVING":
            if self.process.poll() is not None:
                raise RuntimeError(f"routegate serve exited with {self.process.returncode}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"routegate serve not SERVING after {timeout_s} s:\n{self.log_tail()}")
            time.sleep(0.5)

    def healthy(self) -> bool:
        return self.process.poll() is None and check(self.address, timeout_s=5) == "SERVING"

    def rss_bytes(self) -> int:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(re.search(r"^VmRSS:\s+(\d+) kB", status, flags=re.M).group(1)) * 1024

    def metrics(self) -> dict[str, float]:
        """The gateway's Prometheus metrics: by name summed over labels, and by `name{labels}`."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as r:
            text = r.read().decode()
        values: dict[str, float] = {}
        for line in text.splitlines():
            match = re.match(r"^([A-Za-z_:][\w:]*)(\{[^}]*\})? (\S+)$", line)
            if match:
                values[match.group(1)] = values.get(match.group(1), 0.0) + float(match.group(3))
                if match.group(2):
                    values[match.group(1) + match.group(2)] = float(match.group(3))
        return values

    def wait_idle(self, timeout_s: float = 60) -> bool:
        """True once no request runs or waits and no KV page is referenced (cached ones may stay)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            m = self.metrics()
            if (m.get("routegate:num_requests_running", 1) == 0 and m.get("routegate:num_requests_waiting", 1) == 0
                    and m.get("routegate:kv_cache_usage_perc", 1) == 0):
                return True
            time.sleep(0.5)
        return False

    def log_tail(self, lines: int = 30) -> str:
        self._log.flush()
        return "\n".join((Path(self._dir.name) / "server.log").read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        self._dir.cleanup()

    def __enter__(self) -> Gateway:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

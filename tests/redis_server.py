"""Real redis-server processes on free ports for tests (never the shared one on 6379), and a TCP
proxy in front of one that can slow its replies or cut a reply in the middle.

    with RedisServer() as server:            # redis-server --port <free> --save '' --appendonly no
        server.url, server.client().dbsize()
    proxy = FaultProxy(server.port); proxy.delay_s = 1.0; proxy.url
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable

import redis

REDIS_SERVER = shutil.which("redis-server")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A private redis-server; start() again after stop() restarts it empty on the same port."""

    def __init__(self, *extra_args: str, port: int | None = None) -> None:
        if REDIS_SERVER is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.port = port or free_port()
        self.extra_args = extra_args
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)

    def start(self) -> RedisServer:
        self._process = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             *self.extra_args],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while True:
            try:
                self.client().ping()
                return self
            except redis.ConnectionError:
                if self._process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server on port {self.port} did not start") from None
                time.sleep(0.02)

    def stop(self) -> None:
        """Kill it (SIGKILL: no clean shutdown, as when a Redis host dies)."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()
        self._process = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class FaultProxy:
    """Forwards 127.0.0.1:<port> to a Redis; replies can be delayed or cut.

    delay_s: each chunk of a reply waits this long before it is forwarded (a slow Redis).
    hold() ... release(): replies wait in between (a stalled Redis, deterministically).
    cut_after_bytes: once this many reply bytes went through, on_cut() runs and every
    connection is closed (a Redis killed while a large reply is on the wire).
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.delay_s = 0.0
        self.cut_after_bytes: int | None = None
        self.on_cut: Callable[[], None] = lambda: None
        self.reply_bytes = 0
        self._held = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def hold(self) -> None:
        self._held.set()

    def release(self) -> None:
        self._held.clear()

    def close(self) -> None:
        self._held.clear()
        self._listener.close()
        self._close_all()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, True), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, is_reply: bool) -> None:
        try:
            while data := source.recv(65536):
                while is_reply and self._held.is_set():
                    time.sleep(0.005)
                if is_reply and self.delay_s:
                    time.sleep(self.delay_s)
                if is_reply and self.cut_after_bytes is not None:
                    room = self.cut_after_bytes - self.reply_bytes
                    if len(data) >= room:
                        sink.sendall(data[:room])
                        self.reply_bytes += room
                        self.on_cut()
                        self._close_all()
                        return
                sink.sendall(data)
                if is_reply:
                    self.reply_bytes += len(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    def _close_all(self) -> None:
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for s in sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

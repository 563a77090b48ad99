"""A C++ extension compiled on first use, with a pure-torch fallback when it cannot be.

    KERNELS = CompiledExtension("routegate_sampling_kernel", [source], extra_cflags=[...])
    if KERNELS.available():
        KERNELS.module().sample_rows(...)

torch.utils.cpp_extension compiles the sources once per source version and CPU into
TORCH_EXTENSIONS_DIR (default ~/.cache/torch_extensions) and reuses the build afterwards.
Without a compiler the callers run their torch paths; `build_error()` says why.
ROUTEGATE_NO_KERNELS=1 forces those paths for every extension (tests compare both).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import platform
import threading
from types import ModuleType

# -march=native: AVX-512 or AVX2 code for the CPU it runs on; -fopenmp: at::parallel_for runs on
# torch's own OpenMP pool (the same libgomp.so.1 soname).
BASE_CFLAGS = ("-O3", "-march=native", "-std=c++20", "-fopenmp", "-mprefer-vector-width=512")
# The lean torch header every kernel includes (torch_ext.h says why it is not torch/extension.h).
TORCH_EXT_HEADER = os.path.join(os.path.dirname(__file__), "torch_ext.h")
# Every extension constructed so far, for build_all().
_REGISTRY: list["CompiledExtension"] = []


class CompiledExtension:
    def __init__(self, prefix: str, sources: list[str], headers: list[str] = (),
                 extra_cflags: list[str] = ()) -> None:
        self.prefix = prefix
        self.sources = list(sources)
        self.headers = [*headers, TORCH_EXT_HEADER]
        self.cflags = [*BASE_CFLAGS, *extra_cflags]
        self._lock = threading.Lock()
        self._module: ModuleType | None = None
        self._error: str | None = None
        self._tried = False
        _REGISTRY.append(self)

    def build_name(self) -> str:
        """Extension name keyed by every source and header, the flags and the CPU's features.

        NOTE: torch rebuilds when a listed source changes but not when a header it includes does,
        and -march=native code must not be reused on another CPU through a shared cache folder."""
        digest = hashlib.sha256()
        for path in self.sources + self.headers:
            with open(path, "rb") as f:
                digest.update(f.read())
        digest.update(" ".join(self.cflags).encode())
        digest.update(platform.machine().encode())
        try:
            with open("/proc/cpuinfo") as f:
                digest.update(next((line for line in f if line.startswith("flags")), "").encode())
        except OSError:
            pass
        return f"{self.prefix}_{digest.hexdigest()[:12]}"

    def _load(self) -> ModuleType | None:
        with self._lock:
            if not self._tried:
                self._tried = True
                if os.environ.get("ROUTEGATE_NO_KERNELS") == "1":
                    self._error = "disabled by ROUTEGATE_NO_KERNELS=1"
                else:
                    try:
                        self._module = self._build()
                    except Exception as exc:  # no compiler, no ninja, no headers: fall back, say why
                        self._error = f"{type(exc).__name__}: {exc}"
        return self._module

    def _build(self) -> ModuleType:
        from torch.utils import cpp_extension

        name = self.build_name()
        build_dir = cpp_extension._get_build_directory(name, verbose=False)
        # NOTE: torch marks a build in progress with a `lock` file and waits, forever, for it to
        # go away; a build that was killed leaves it behind and every later start hangs. An
        # flock is released by the kernel when its holder dies, so whoever holds ours knows that
        # a torch lock file it finds is stale.
        with open(build_dir + ".routegate-lock", "w") as guard:
            fcntl.flock(guard, fcntl.LOCK_EX)
            try:
                stale = os.path.join(build_dir, "lock")
                if os.path.exists(stale):
                    os.remove(stale)
                return cpp_extension.load(name=name, sources=self.sources, extra_cflags=self.cflags,
                                          extra_ldflags=["-fopenmp"], build_directory=build_dir, verbose=False)
            finally:
                fcntl.flock(guard, fcntl.LOCK_UN)

    def available(self) -> bool:
        """True when the extension is loaded (building it now if needed)."""
        return self._load() is not None

    def build_error(self) -> str | None:
        """Why the extension is not in use, or None when it is."""
        self._load()
        return self._error

    def module(self) -> ModuleType:
        module = self._module or self._load()
        if module is None:
            raise RuntimeError(f"the compiled {self.prefix} extension is not available: {self._error}")
        return module


def build_all() -> dict[str, str | None]:
    """Build every kernel of the engines at once, one compiler per core, instead of one after
    another on first use (four builds of ~25 s each on two cores); returns each extension's
    build error (None when it loaded). Callers: engine loading and the test session."""
    from concurrent.futures import ThreadPoolExecutor

    # Importing the kernel modules constructs (registers) their extensions.
    from backends import dense_kernel, fused_ops, sampling_kernel  # noqa: F401
    from backends.quantization import kernel_cpu  # noqa: F401

    pending = [e for e in _REGISTRY if not e._tried]
    with ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1)) as pool:
        list(pool.map(lambda e: e.available(), pending))  # the builds run in ninja subprocesses
    return {e.prefix: e.build_error() for e in _REGISTRY}

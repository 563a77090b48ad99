"""CompiledExtension: builds a real (tiny) C++ extension, survives a build that was killed."""

from __future__ import annotations

import os
import threading

import pytest

from backends.compiled_extension import CompiledExtension

# pybind11 alone: a real extension build through torch's loader, seconds instead of the ~50 s
# that parsing torch's headers costs on two cores.
SOURCE = """
#include <pybind11/pybind11.h>
double twice(double x) { return 2 * x; }
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.def("twice", &twice); }
"""


@pytest.fixture
def extension(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "build"))
    monkeypatch.delenv("ROUTEGATE_NO_KERNELS", raising=False)
    source = tmp_path / "twice.cpp"
    source.write_text(SOURCE)
    return CompiledExtension("routegate_test_twice", [str(source)])


def test_a_lock_left_by_a_killed_build_does_not_hang_the_next_one(extension):
    from torch.utils import cpp_extension

    build_dir = cpp_extension._get_build_directory(extension.build_name(), verbose=False)
    open(os.path.join(build_dir, "lock"), "w").close()  # what a build killed mid-way leaves
    done = threading.Event()
    result = {}

    def load():
        result["ok"] = extension.available()
        done.set()

    threading.Thread(target=load, daemon=True).start()
    assert done.wait(300), "the build hung on the stale lock file"
    assert result["ok"], extension.build_error()
    assert extension.module().twice(2.5) == 5.0


def test_no_kernels_env_forces_the_fallback(extension, monkeypatch):
    monkeypatch.setenv("ROUTEGATE_NO_KERNELS", "1")
    assert not extension.available()
    assert extension.build_error() == "disabled by ROUTEGATE_NO_KERNELS=1"
    with pytest.raises(RuntimeError, match="not available"):
        extension.module()

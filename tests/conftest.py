"""Session set-up shared by every test module."""

from __future__ import annotations


def pytest_configure(config) -> None:
    # Modules check kernel availability at import (skipif marks), which would build the four
    # compiled kernels one after another during collection; build them side by side first.
    from backends import compiled_extension

    compiled_extension.build_all()

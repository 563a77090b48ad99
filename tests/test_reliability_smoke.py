"""The reliability suite's fuzz case, small: 200 generated requests against a real `routegate
serve` each get a clean status, and the gateway stays healthy with its pool idle. (`make
reliability` runs 10,000 of them, plus the soak and fault cases.)"""

from __future__ import annotations

from reliability import cases


def test_fuzz_case_small():
    result = cases.fuzz(num_requests=200, concurrency=16)
    assert result.held, result.line()
    assert "inputs tried: 200;" in result.summary and result.summary.endswith("requests lost: 0")

"""SamplingParams: defaults, normalisation, and every invalid value rejected naming its field."""

from __future__ import annotations

import math

import pytest

from backends.sampling_params import SamplingParams


def test_defaults_are_plain_sampling() -> None:
    p = SamplingParams()
    assert (p.temperature, p.top_k, p.top_p, p.min_p) == (1.0, 0, 1.0, 0.0)
    assert (p.repetition_penalty, p.presence_penalty, p.frequency_penalty) == (1.0, 0.0, 0.0)
    assert (p.seed, p.max_tokens, p.min_tokens, p.logprobs) == (None, 16, 0, 0)
    assert (p.stop, p.stop_token_ids, p.logit_bias) == ((), (), ())
    assert not p.greedy and not p.has_penalties and not p.ignore_eos and not p.adaptive_temperature


def test_greedy_means_temperature_zero_or_below_1e_5() -> None:
    assert SamplingParams(temperature=0.0).greedy
    assert SamplingParams(temperature=1e-6).greedy
    assert not SamplingParams(temperature=1e-5).greedy


def test_collections_are_normalised_to_hashable_tuples() -> None:
    p = SamplingParams(stop=["\n\n", "END"], stop_token_ids=[7, 3], logit_bias={9: -1, 2: 5.5})
    assert p.stop == ("\n\n", "END")
    assert p.stop_token_ids == (7, 3)
    assert p.logit_bias == ((2, 5.5), (9, -1.0))  # sorted by id, floats
    assert SamplingParams(stop="###").stop == ("###",)  # a bare string is one stop string
    assert SamplingParams(logit_bias=[(4, 1.0)]).logit_bias == ((4, 1.0),)
    assert hash(p) == hash(SamplingParams(stop=("\n\n", "END"), stop_token_ids=(7, 3),
                                          logit_bias=[(9, -1.0), (2, 5.5)]))


@pytest.mark.parametrize("kwargs", [
    dict(temperature=0.0), dict(top_k=1), dict(top_p=1.0), dict(top_p=1e-9), dict(min_p=0.0),
    dict(min_p=1.0), dict(repetition_penalty=0.01), dict(repetition_penalty=100.0), dict(presence_penalty=-2.0),
    dict(presence_penalty=2.0), dict(frequency_penalty=-2.0), dict(frequency_penalty=2.0),
    dict(seed=0), dict(seed=2**63 - 1), dict(max_tokens=1), dict(min_tokens=16, max_tokens=16),
    dict(stop=[f"s{i}" for i in range(16)]), dict(logprobs=20), dict(logit_bias={0: -100, 1: 100}),
    dict(ignore_eos=True), dict(adaptive_temperature=True),
])
def test_boundary_values_are_accepted(kwargs) -> None:
    SamplingParams(**kwargs)


@pytest.mark.parametrize("field, kwargs", [
    ("temperature", dict(temperature=-0.1)),
    ("temperature", dict(temperature=math.nan)),
    ("temperature", dict(temperature=math.inf)),
    ("temperature", dict(temperature="1")),
    ("top_k", dict(top_k=-1)),
    ("top_k", dict(top_k=1.5)),
    ("top_k", dict(top_k=True)),
    ("top_p", dict(top_p=0.0)),
    ("top_p", dict(top_p=1.01)),
    ("top_p", dict(top_p=math.nan)),
    ("min_p", dict(min_p=-0.01)),
    ("min_p", dict(min_p=1.5)),
    ("repetition_penalty", dict(repetition_penalty=0.0)),
    ("repetition_penalty", dict(repetition_penalty=-1.0)),
    ("repetition_penalty", dict(repetition_penalty=math.inf)),
    ("repetition_penalty", dict(repetition_penalty=1.4013e-45)),  # subnormal: penalized logits overflowed
    ("repetition_penalty", dict(repetition_penalty=100.5)),
    ("presence_penalty", dict(presence_penalty=-2.01)),
    ("presence_penalty", dict(presence_penalty=2.5)),
    ("frequency_penalty", dict(frequency_penalty=-3.0)),
    ("frequency_penalty", dict(frequency_penalty=math.nan)),
    ("seed", dict(seed=-1)),
    ("seed", dict(seed=2**63)),
    ("seed", dict(seed=1.0)),
    ("max_tokens", dict(max_tokens=0)),
    ("min_tokens", dict(min_tokens=-1)),
    ("min_tokens", dict(min_tokens=17, max_tokens=16)),
    ("stop", dict(stop=[""])),
    ("stop", dict(stop=["a", 3])),
    ("stop", dict(stop=[f"s{i}" for i in range(17)])),
    ("stop_token_ids", dict(stop_token_ids=[-5])),
    ("stop_token_ids", dict(stop_token_ids=[2.0])),
    ("ignore_eos", dict(ignore_eos=1)),
    ("logprobs", dict(logprobs=-1)),
    ("logprobs", dict(logprobs=21)),
    ("logit_bias", dict(logit_bias={-1: 1.0})),
    ("logit_bias", dict(logit_bias={"5": 1.0})),
    ("logit_bias", dict(logit_bias={5: 100.5})),
    ("logit_bias", dict(logit_bias={5: -101.0})),
    ("logit_bias", dict(logit_bias={5: math.nan})),
    ("logit_bias", dict(logit_bias=[(5, 1.0), (5, 2.0)])),
    ("logit_bias", dict(logit_bias=[(5,)])),
    ("adaptive_temperature", dict(adaptive_temperature="yes")),
])
def test_invalid_values_are_rejected_naming_the_field(field, kwargs) -> None:
    with pytest.raises(ValueError, match=rf"^{field}\b"):
        SamplingParams(**kwargs)

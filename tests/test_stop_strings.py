"""Stop strings are found across chunk boundaries, never emitted, and held text is released."""

from __future__ import annotations

import pytest

from backends.stop_strings import StopStringMatcher


def feed(stop, chunks):
    m = StopStringMatcher(stop)
    emitted = [m.add(c) for c in chunks]
    return emitted, m.flush(), m.matched


def test_no_stop_strings_streams_everything_at_once():
    assert feed((), ["ab", "cd"]) == (["ab", "cd"], "", None)


def test_stop_string_split_over_three_chunks_is_cut_and_not_emitted():
    assert feed(("Observation:",), ["Think. Obs", "erv", "ation: done"]) == (["Think. ", "", ""], "", "Observation:")


def test_held_prefix_is_released_when_it_does_not_complete():
    # "Ob" might start "Observation:"; "Oblong" proves it does not.
    assert feed(("Observation:",), ["an Ob", "long"]) == (["an ", "Oblong"], "", None)


def test_held_prefix_is_flushed_at_the_end():
    assert feed(("</answer>",), ["42</ans"]) == (["42"], "</ans", None)


def test_earliest_of_several_stop_strings_wins():
    assert feed(("world", "lo w"), ["hello world"]) == (["hel"], "", "lo w")


def test_nothing_after_a_match():
    assert feed(("\n",), ["a\nb", "c"]) == (["a", ""], "", "\n")


def test_stop_string_at_the_very_start():
    assert feed(("ab",), ["a", "b", "c"]) == (["", "", ""], "", "ab")


def test_unicode_stop_string_across_chunks():
    assert feed(("世界",), ["你好世", "界!"]) == (["你好", ""], "", "世界")


def test_empty_stop_string_is_rejected():
    with pytest.raises(ValueError, match="non-empty"):
        StopStringMatcher(("",))

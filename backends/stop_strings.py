"""Stop strings over streamed text: found across chunk boundaries, never emitted.

A stop string may arrive split over several text deltas ("Obs" + "erv" + "ation:"), so the
tail of the text that could still grow into a stop string is held back until the next delta
proves it either is one (the request stops, the held text is dropped) or is not (it is sent).
Only the longest suffix that is a prefix of some stop string is held, so ordinary text streams
without delay.
"""

from __future__ import annotations

from collections.abc import Sequence


class StopStringMatcher:
    """Cuts one request's text stream at the first occurrence of any stop string."""

    def __init__(self, stop: Sequence[str]) -> None:
        if any(not s for s in stop):
            raise ValueError("stop strings must be non-empty")
        self._stop = tuple(stop)
        self._held = ""  # text not yet emitted: it may be the start of a stop string
        self.matched: str | None = None  # the stop string that ended the text, once found

    def add(self, text: str) -> str:
        """The part of `text` (plus held text) that is safe to emit; empty after a match."""
        if self.matched is not None:
            return ""
        if not self._stop:
            return text
        buffer = self._held + text
        cut, found = len(buffer), None
        for s in self._stop:
            i = buffer.find(s)
            if i != -1 and i < cut:
                cut, found = i, s
        if found is not None:
            self.matched, self._held = found, ""
            return buffer[:cut]
        keep = self._held_suffix(buffer)
        self._held = buffer[len(buffer) - keep:] if keep else ""
        return buffer[:len(buffer) - keep]

    def flush(self) -> str:
        """Held text at the end of the request (it did not become a stop string)."""
        held, self._held = self._held, ""
        return "" if self.matched is not None else held

    def _held_suffix(self, buffer: str) -> int:
        """Length of the longest suffix of buffer that is a proper prefix of a stop string."""
        best = 0
        for s in self._stop:
            for n in range(min(len(s) - 1, len(buffer)), best, -1):
                if buffer.endswith(s[:n]):
                    best = n
                    break
        return best

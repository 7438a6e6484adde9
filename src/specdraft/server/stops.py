"""Stop strings over streamed text: never emit text that a stop string will later cut off."""

from __future__ import annotations


class StopMatcher:
    """Feed text pieces; get back what is safe to emit, and whether a stop string was hit.

    Up to (longest stop - 1) characters are held back, since they may be the start of a stop
    string completed by the next piece; `flush` releases them at the end.
    """

    def __init__(self, stops: list[str]):
        self.stops = [s for s in stops if s]
        self.hold = max((len(s) for s in self.stops), default=1) - 1
        self.buffer = ""
        self.stopped = False

    def push(self, piece: str) -> str:
        if self.stopped:
            return ""
        self.buffer += piece
        # The stop completed first wins, wherever the piece boundaries fall (text "aca" with stops
        # "c" and "aca": "c" completes first, so "a" is kept, as it would be one character at a time).
        hits = [(i + len(s), i) for s, i in ((s, self.buffer.find(s)) for s in self.stops) if i >= 0]
        cut = min(hits)[1] if hits else -1
        if cut >= 0:
            self.stopped = True
            out, self.buffer = self.buffer[:cut], ""
            return out
        if self.hold == 0:
            out, self.buffer = self.buffer, ""
            return out
        out, self.buffer = self.buffer[:-self.hold], self.buffer[-self.hold:]
        return out

    def flush(self) -> str:
        out, self.buffer = ("" if self.stopped else self.buffer), ""
        return out

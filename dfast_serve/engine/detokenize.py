"""Append-only incremental detokenization with UTF-8 and stop-string hold-back (both engines)."""

from __future__ import annotations

from typing import Any

REPLACEMENT_CHAR = "\ufffd"


class StreamingDetokenizer:
    """Turns a growing list of token ids into text that is safe to send and never retracted.

    Two things are held back from the client until they are resolved:
    * an incomplete multi-byte UTF-8 character (the tokenizer decodes it as U+FFFD at the end);
    * a tail of text that could be the beginning of a stop string.
    When a stop string appears, the text before it is final and nothing after it is sent.
    """

    def __init__(self, tokenizer: Any, stop: list[str] | None = None) -> None:
        self.tokenizer = tokenizer
        self.stop = [s for s in (stop or []) if s]
        self.token_ids: list[int] = []
        self.sent_chars = 0
        self.stopped = False  # a stop string was found
        self._text = ""

    @property
    def text(self) -> str:
        """Everything sent so far."""
        return self._text[: self.sent_chars]

    def _decode(self) -> str:
        return self.tokenizer.decode(self.token_ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def add(self, token_ids: list[int]) -> str:
        """Append committed tokens; return the newly releasable text ('' if all held back)."""
        if self.stopped or not token_ids:
            return ""
        self.token_ids.extend(token_ids)
        text = self._decode()
        safe = len(text)
        while safe > self.sent_chars and text[safe - 1] == REPLACEMENT_CHAR:
            safe -= 1
        stop_at = self._find_stop(text)
        if stop_at is not None:
            self.stopped = True
            safe = min(safe, stop_at)
        else:
            safe -= self._stop_prefix_len(text[:safe])
        return self._release(text, safe)

    def finish(self) -> str:
        """No more tokens: release what was held back for a possible stop string."""
        if self.stopped:
            return ""
        text = self._decode()
        end = len(text)
        while end > self.sent_chars and text[end - 1] == REPLACEMENT_CHAR:
            end -= 1
        return self._release(text, end)

    def _release(self, text: str, upto: int) -> str:
        self._text = text
        if upto <= self.sent_chars:
            return ""
        new = text[self.sent_chars : upto]
        self.sent_chars = upto
        return new

    def _find_stop(self, text: str) -> int | None:
        # Search only where a stop string could newly appear (it may straddle the sent boundary).
        longest = max((len(s) for s in self.stop), default=0)
        start = max(0, self.sent_chars - longest)
        hits = [i for s in self.stop if (i := text.find(s, start)) != -1]
        return min(hits) if hits else None

    def _stop_prefix_len(self, text: str) -> int:
        """Length of the longest tail of ``text`` that is a proper prefix of a stop string."""
        best = 0
        for s in self.stop:
            for n in range(min(len(s) - 1, len(text)), best, -1):
                if text.endswith(s[:n]):
                    best = n
                    break
        return best

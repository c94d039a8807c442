"""Append-only incremental detokenization with UTF-8 and stop-string hold-back (both engines).

Each ``add`` decodes only a short window of tokens (the ones not yet turned into text plus the
previous few, for context), never the whole answer: a request's total decoding work is linear
in its length. The window starts where the last complete text ended; while the newest token ends
in half a UTF-8 character (the tokenizer decodes it as U+FFFD), the window grows until the
character is complete.
"""

from __future__ import annotations

from collections import deque
from typing import Any

REPLACEMENT_CHAR = "\ufffd"


class StreamingDetokenizer:
    """Turns a growing list of token ids into text that is safe to send and never retracted.

    Two things are held back from the client until they are resolved:
    * an incomplete multi-byte UTF-8 character;
    * a tail of text that could be the beginning of a stop string.
    When a stop string appears, the text before it is final and nothing after it is sent.
    ``token_count`` counts the tokens whose text has been released (after a stop string, exactly
    the tokens that produced the text before the cut), so usage never counts held-back tokens.
    """

    def __init__(self, tokenizer: Any, stop: list[str] | None = None, skip_special_tokens: bool = True) -> None:
        self.tokenizer = tokenizer
        self.stop = [s for s in (stop or []) if s]
        self.skip_special_tokens = skip_special_tokens
        self.token_ids: list[int] = []
        self.sent_chars = 0
        self.stopped = False  # a stop string was found
        self._prefix_offset = 0  # the decode window starts here (context for spaces and merges)
        self._read_offset = 0  # tokens before this are already text
        # Decoded but not released: a possible stop-string start. Released text never ends in one,
        # so a stop string can only begin here.
        self._unsent = ""
        # (tokens, end of their text) for decoded text not yet all released, oldest first
        self._boundaries: deque[tuple[int, int]] = deque()
        self._released_tokens = 0
        self._stop_tokens: int | None = None

    @property
    def token_count(self) -> int:
        """Tokens whose text has been released (before the cut, once a stop string is found)."""
        return self._released_tokens if self._stop_tokens is None else self._stop_tokens

    def add(self, token_ids: list[int]) -> str:
        """Append committed tokens; return the newly releasable text ('' if all held back)."""
        if self.stopped or not token_ids:
            return ""
        self.token_ids.extend(token_ids)
        self._unsent += self._decode_new(final=False)
        return self._release(final=False)

    def finish(self) -> str:
        """No more tokens: release what was held back (a dangling partial character is dropped)."""
        if self.stopped:
            return ""
        self._unsent += self._decode_new(final=True)
        return self._release(final=True)

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens,
                                     clean_up_tokenization_spaces=False)

    def _decode_new(self, final: bool) -> str:
        """Text the tokens after ``_read_offset`` add; '' while it ends in half a character."""
        if self._read_offset == len(self.token_ids):
            return ""
        before = self._decode(self.token_ids[self._prefix_offset : self._read_offset])
        text = self._decode(self.token_ids[self._prefix_offset :])
        if text.endswith(REPLACEMENT_CHAR):
            if not final:
                return ""
            text = text.rstrip(REPLACEMENT_CHAR)
        if len(text) <= len(before) and not final:
            return ""
        self._prefix_offset, self._read_offset = self._read_offset, len(self.token_ids)
        new = text[len(before) :]
        self._boundaries.append((len(self.token_ids), self.sent_chars + len(self._unsent) + len(new)))
        return new

    def _release(self, final: bool) -> str:
        stop_at = self._find_stop(self._unsent)
        if stop_at is not None:
            self.stopped = True
            upto = stop_at
            self._stop_tokens = self._tokens_for(self.sent_chars + upto)
        elif final:
            upto = len(self._unsent)
        else:
            upto = len(self._unsent) - self._stop_prefix_len(self._unsent)
        out, self._unsent = self._unsent[:upto], self._unsent[upto:]
        self.sent_chars += len(out)
        while self._boundaries and self._boundaries[0][1] <= self.sent_chars:
            self._released_tokens = self._boundaries.popleft()[0]
        return out

    def _find_stop(self, text: str) -> int | None:
        hits = [i for s in self.stop if (i := text.find(s)) != -1]
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

    def _tokens_for(self, chars: int) -> int:
        """The fewest leading tokens whose text covers ``chars`` characters (once per request: at a stop)."""
        lo, hi = 0, len(self.token_ids)
        while lo < hi:
            mid = (lo + hi) // 2
            if len(self._decode(self.token_ids[:mid]).rstrip(REPLACEMENT_CHAR)) >= chars:
                hi = mid
            else:
                lo = mid + 1
        return lo

"""A byte-level toy tokenizer for the detokenizer and sequence tests: the test chooses each token's bytes."""

EOS = 0


class ByteTokenizer:
    """Each id is a byte string; decoding joins them as UTF-8 (a split character decodes to U+FFFD,
    as real byte-level tokenizers do). Id 0 is the special ``<|endoftext|>``."""

    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces = [b"<|endoftext|>"] + pieces
        self.calls = []

    def ids(self) -> list[int]:
        return list(range(1, len(self.pieces)))

    def decode(self, ids, skip_special_tokens=True, clean_up_tokenization_spaces=True):
        """``clean_up_tokenization_spaces`` defaults to True, as it does for many Hugging Face tokenizers."""
        self.calls.append((skip_special_tokens, clean_up_tokenization_spaces))
        text = b"".join(self.pieces[i] for i in ids if not (skip_special_tokens and i == EOS)).decode(
            "utf-8", errors="replace")
        return text.replace(" .", ".").replace(" ,", ",") if clean_up_tokenization_spaces else text

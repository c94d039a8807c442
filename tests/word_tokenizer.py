"""A word-level tokenizer for the tiny test checkpoints, which have no real vocabulary: id i is the
word "t<i>" unless named, words are split on whitespace and joined with spaces, and the chat
template wraps each message in t3 ... t4 and asks for the answer with t5. Written as a
tokenizer.json + tokenizer_config.json that ``PreTrainedTokenizerFast`` loads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CHAT_TEMPLATE = ("{% for m in messages %}t3 {{ m['content'] }} t4 {% endfor %}"
                 "{% if add_generation_prompt %}t5 {% endif %}")


def write_word_tokenizer(directory: Path, vocab: int, names: dict[int, str], unk_id: int, **config: Any) -> None:
    """``names``: the ids with their own word (specials); ``config``: more tokenizer_config.json
    fields (``eos_token``, ``pad_token``, ...), the chat template and class set already."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    def word(i: int) -> str:
        return names.get(i, f"t{i}")

    tok = Tokenizer(models.WordLevel({word(i): i for i in range(vocab)}, unk_token=word(unk_id)))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with spaces
    tok.save(str(directory / "tokenizer.json"))
    full = {"tokenizer_class": "PreTrainedTokenizerFast", "chat_template": CHAT_TEMPLATE, **config}
    (directory / "tokenizer_config.json").write_text(json.dumps(full))

from dfast_serve.engine.detokenize import StreamingDetokenizer


def stream_one_by_one(tokenizer, ids, stop=None):
    detok = StreamingDetokenizer(tokenizer, stop)
    pieces = [detok.add([i]) for i in ids]
    pieces.append(detok.finish())
    return detok, pieces


def test_multibyte_characters_split_across_tokens_are_held_back(smollm2, tiny_mdlm):
    text = "naïve café ☕ 你好 ḁ done"
    for model in (smollm2, tiny_mdlm):
        ids = model.tokenizer.encode(text)
        assert len(ids) > len(text.split())  # some characters really are split
        detok, pieces = stream_one_by_one(model.tokenizer, ids)
        assert all("\ufffd" not in p for p in pieces)
        assert "".join(pieces) == text
        assert detok.token_count == len(ids)


def test_stop_string_across_tokens_is_never_sent(smollm2):
    text = "The answer lies in the sky. More text after."
    ids = smollm2.tokenizer.encode(text)
    stop = "sky. Mo"  # spans several tokens and starts mid-token
    detok, pieces = stream_one_by_one(smollm2.tokenizer, ids, [stop])
    sent = "".join(pieces)
    assert sent == "The answer lies in the "
    assert detok.stopped
    for i in range(1, len(stop)):
        assert not sent.endswith(stop[:i])


def test_possible_stop_prefix_is_released_when_it_turns_out_not_to_be_one(smollm2):
    ids = smollm2.tokenizer.encode("red shirt and red shoes")
    detok, pieces = stream_one_by_one(smollm2.tokenizer, ids, ["red hat"])
    assert "".join(pieces) == "red shirt and red shoes"
    assert not detok.stopped


def test_some_token_really_decodes_to_half_a_character(smollm2):
    ids = smollm2.tokenizer.encode("你好")
    assert any("\ufffd" in smollm2.tokenizer.decode(ids[:k]) for k in range(1, len(ids)))


def test_a_stream_that_ends_on_half_a_character_sends_only_whole_characters(smollm2):
    ids = smollm2.tokenizer.encode("ok 你好")
    cut = next(k for k in range(1, len(ids)) if smollm2.tokenizer.decode(ids[:k]).endswith("\ufffd"))
    _, pieces = stream_one_by_one(smollm2.tokenizer, ids[:cut])
    assert "".join(pieces) == smollm2.tokenizer.decode(ids[:cut]).rstrip("\ufffd")
    assert all("\ufffd" not in p for p in pieces)


class CountingTokenizer:
    """Wraps a tokenizer and counts the token ids it is asked to decode."""

    def __init__(self, inner) -> None:
        self.inner, self.decoded_ids = inner, 0

    def decode(self, ids, **kwargs):
        self.decoded_ids += len(ids)
        return self.inner.decode(ids, **kwargs)


def test_decoding_work_is_linear_in_the_answer_length(smollm2):
    ids = smollm2.tokenizer.encode("In the beginning God created the heaven and the earth. " * 60)[:2000]
    counting = CountingTokenizer(smollm2.tokenizer)
    detok, pieces = stream_one_by_one(counting, ids)
    assert "".join(pieces) == smollm2.tokenizer.decode(ids)
    assert counting.decoded_ids <= 8 * len(ids)  # re-decoding everything each time would be ~len(ids)**2 / 2


class PieceTokenizer:
    """Token i is ``pieces[i]``: text boundaries are exactly where the test puts them."""

    def __init__(self, pieces: list[str]) -> None:
        self.pieces = pieces

    def decode(self, ids, **_):
        return "".join(self.pieces[i] for i in ids)


def test_every_proper_prefix_of_a_stop_string_is_held_back_to_the_last_character():
    """One character a token: the longest possible start of the stop string ("Amen an", seven of its
    eight characters) is held back, and the stop string is found when its last character arrives."""
    text = "Peace. Amen and amen"
    tokenizer = PieceTokenizer(list(text))
    detok, pieces = stream_one_by_one(tokenizer, list(range(len(text))), ["Amen and"])
    assert pieces == list("Peace. ") + [""] * 14  # 13 characters from "A" on, then finish()
    assert detok.stopped and detok.token_count == 7
    # a near miss releases the held-back prefix in one piece, at the character that rules it out
    text = "Amen an apple"
    tokenizer = PieceTokenizer(list(text))
    detok, pieces = stream_one_by_one(tokenizer, list(range(len(text))), ["Amen and"])
    assert pieces == ["", "", "", "", "", "", "", "Amen an ", "a", "p", "p", "l", "e", ""]
    assert not detok.stopped and detok.token_count == len(text)


def test_usage_at_a_stop_string_that_starts_on_a_token_boundary_counts_the_tokens_before_it():
    tokenizer = PieceTokenizer(["In", " the", " beginning", " God", " created", " the", " heaven"])
    detok, pieces = stream_one_by_one(tokenizer, list(range(7)), [" God"])
    assert "".join(pieces) == "In the beginning" and detok.stopped
    assert detok.token_count == 3
    # starting inside a token: that token's text is partly kept, so it counts
    detok, pieces = stream_one_by_one(tokenizer, list(range(7)), ["od cr"])
    assert "".join(pieces) == "In the beginning G" and detok.token_count == 4
    # a stop string at the very start keeps nothing and counts nothing
    detok, pieces = stream_one_by_one(tokenizer, list(range(7)), ["In the"])
    assert "".join(pieces) == "" and detok.token_count == 0

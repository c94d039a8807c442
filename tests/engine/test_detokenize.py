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
        assert detok.text == text


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

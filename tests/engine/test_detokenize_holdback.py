"""The streaming detokenizer on a byte-level toy tokenizer whose tokens the test chooses: exactly
what each ``add`` releases (stop-string and half-character hold-back) and the token count usage
reports, at a stop string and without one."""

from dfast_serve.engine.detokenize import StreamingDetokenizer
from tests.engine.byte_tokenizer import EOS, ByteTokenizer

def stream(pieces: list[bytes], stop=None, skip_special_tokens=True, extra=()):
    tok = ByteTokenizer(pieces)
    detok = StreamingDetokenizer(tok, stop, skip_special_tokens)
    out = [detok.add([i]) for i in tok.ids() + list(extra)]
    out.append(detok.finish())
    return detok, out


def test_a_stop_string_prefix_is_held_back_to_the_last_character():
    detok, out = stream([b"Hello", b" E", b"N", b"D!", b" more"], stop=["END"])
    assert out == ["Hello", " ", "", "", "", ""]
    assert detok.stopped
    assert detok.token_count == 2  # "Hello", " E": the tokens whose text reaches the cut


def test_the_token_count_at_a_stop_is_the_tokens_before_it():
    detok, out = stream([b"ab", b"cd", b"STOP", b"ef"], stop=["STOP"])
    assert "".join(out) == "abcd"
    assert detok.token_count == 2
    detok, out = stream([b"ab", b"cdST", b"OP"], stop=["STOP"])
    assert "".join(out) == "abcd"
    assert detok.token_count == 2  # "cdST" produced text before the cut: counted
    detok, out = stream([b"STOP", b"x"], stop=["STOP"])
    assert out == ["", "", ""] and detok.token_count == 0


def test_the_earliest_of_several_stop_strings_cuts():
    detok, out = stream([b"one two three"], stop=["three", "two"])
    assert "".join(out) == "one " and detok.stopped


def test_the_longest_possible_stop_prefix_is_held():
    detok = StreamingDetokenizer(ByteTokenizer([b"xab"]), ["abc", "bq", "xabz"])
    assert detok.add([1]) == ""  # "xab" is a prefix of "xabz"
    detok = StreamingDetokenizer(ByteTokenizer([b"xab"]), ["abc", "bq"])
    assert detok.add([1]) == "x"  # "ab" (of "abc") is longer than "b" (of "bq")
    assert detok.finish() == "ab"
    assert detok.token_count == 1 and not detok.stopped


def test_a_whole_stop_string_is_not_held_as_a_prefix_of_itself():
    detok = StreamingDetokenizer(ByteTokenizer([b"ab", b"c"]), ["ab"])
    assert detok.add([1]) == "" and detok.stopped


def test_held_back_tokens_are_not_counted_until_released():
    tok = ByteTokenizer([b"x", b"S", b"y"])
    detok = StreamingDetokenizer(tok, ["ST"])
    assert detok.add([1]) == "x" and detok.token_count == 1
    assert detok.add([2]) == "" and detok.token_count == 1
    assert detok.add([3]) == "Sy" and detok.token_count == 3
    assert detok.finish() == "" and detok.token_count == 3


def test_a_split_character_waits_for_its_last_byte():
    euro = "€".encode()  # three bytes
    detok, out = stream([b"a", euro[:1], euro[1:2], euro[2:], b"b"])
    assert out == ["a", "", "", "€", "b", ""]
    assert detok.token_count == 5


def test_a_dangling_half_character_is_dropped_at_the_end():
    detok, out = stream([b"ok", "é".encode()[:1]])
    assert out == ["ok", "", ""]
    assert "\ufffd" not in "".join(out)


def test_special_tokens_are_skipped_or_kept_as_asked():
    _, out = stream([b"Hi"], extra=[EOS])
    assert "".join(out) == "Hi"
    detok, out = stream([b"Hi"], skip_special_tokens=False, extra=[EOS])
    assert "".join(out) == "Hi<|endoftext|>"
    assert detok.token_count == 2
    assert detok.tokenizer.calls and all(call == (False, False) for call in detok.tokenizer.calls)


def test_empty_stop_strings_are_ignored_and_nothing_is_held():
    detok, out = stream([b"a", b"b"], stop=["", ""])
    assert out == ["a", "b", ""] and not detok.stopped and detok.stop == []


def test_nothing_is_added_after_a_stop_or_from_no_tokens():
    tok = ByteTokenizer([b"a", b"STOP", b"b"])
    detok = StreamingDetokenizer(tok, ["STOP"])
    assert detok.add([]) == "" and detok.token_ids == []
    assert detok.add([1, 2]) == "a" and detok.stopped
    assert detok.add([3]) == "" and detok.token_ids == [1, 2]
    assert detok.finish() == ""
    assert detok.token_count == 1


def test_several_tokens_at_once_release_their_text_together():
    detok = StreamingDetokenizer(ByteTokenizer([b"a", b"b", b"c"]), [])
    assert detok.add([1, 2, 3]) == "abc" and detok.token_count == 3
    assert detok.finish() == ""


def test_a_dangling_half_character_does_not_take_the_text_before_it():
    detok, out = stream([b"ok", b"x" + "é".encode()[:1]])
    assert out == ["ok", "", "x"]
    assert detok.token_count == 2  # every generated token is counted once the stream ends


def test_the_text_is_the_tokens_as_they_are_without_cleaning_up_spaces():
    detok, out = stream([b"Hi", b" .", b" ,"])
    assert "".join(out) == "Hi . ,"


def test_a_token_counts_once_its_text_is_released_even_when_part_of_it_is_held():
    """Usage mid-stream counts the tokens whose text reached the client: "aS" and "bS" each end
    in what may begin the stop string "ST", so each is counted once the text after it arrives."""
    tok = ByteTokenizer([b"aS", b"bS"])
    detok = StreamingDetokenizer(tok, ["ST"])
    assert (detok.add([1]), detok.token_count) == ("a", 0)
    assert (detok.add([2]), detok.token_count) == ("Sb", 1)
    assert (detok.finish(), detok.token_count) == ("S", 2)


def test_a_token_without_text_is_counted_with_the_text_that_follows():
    tok = ByteTokenizer([b"a", b"b"])
    detok = StreamingDetokenizer(tok, [])
    assert (detok.add([1]), detok.token_count) == ("a", 1)
    assert (detok.add([EOS]), detok.token_count) == ("", 1)  # a skipped special token: no text yet
    assert (detok.add([2]), detok.token_count) == ("b", 3)

"""UTF-8 holding and stop-sequence matching across token boundaries."""

from __future__ import annotations

from llorch.worker.backend.text import IncrementalText


def feed(pieces: list[bytes], stops: tuple[str, ...] = ()) -> tuple[list[str], str | None, str]:
    text = IncrementalText(stops)
    released: list[str] = []
    for piece in pieces:
        out, matched = text.push(piece)
        released.append(out)
        if matched is not None:
            return released, matched, ""
    return released, None, text.flush()


def test_multibyte_character_split_across_tokens_is_held_until_complete():
    emoji = "😀".encode()  # four bytes
    released, matched, rest = feed([b"hi ", emoji[:1], emoji[1:3], emoji[3:], b"!"])
    assert released == ["hi ", "", "", "😀", "!"]
    assert matched is None and rest == ""


def test_holding_reports_pending_bytes():
    text = IncrementalText()
    text.push("é".encode()[:1])
    assert text.holding
    assert text.push("é".encode()[1:]) == ("é", None)
    assert not text.holding


def test_invalid_bytes_become_replacement_characters_at_flush():
    released, _, rest = feed([b"ok", b"\xe6\x97"])
    assert released == ["ok", ""]
    assert rest == "\ufffd"


def test_stop_sequence_split_across_tokens_is_matched_and_not_released():
    released, matched, _ = feed([b"Paris", b"\n", b"\nQuestion"], stops=("\n\n",))
    assert matched == "\n\n"
    assert "".join(released) == "Paris"
    assert released == ["Paris", "", ""]


def test_text_after_the_stop_sequence_is_dropped():
    released, matched, _ = feed([b"one END two"], stops=("END",))
    assert (released, matched) == (["one "], "END")


def test_a_held_prefix_that_does_not_complete_is_released():
    released, matched, rest = feed([b"a\n", b"b"], stops=("\n\n",))
    assert released == ["a", "\nb"]
    assert matched is None and rest == ""


def test_held_prefix_is_released_by_flush_at_the_end():
    released, matched, rest = feed([b"a\n"], stops=("\n\n",))
    assert released == ["a"] and matched is None and rest == "\n"


def test_earliest_of_several_stop_sequences_wins():
    released, matched, _ = feed([b"x ", b"BBB AAA"], stops=("AAA", "BBB"))
    assert matched == "BBB" and "".join(released) == "x "


def test_stop_sequence_spanning_a_multibyte_boundary():
    stop = "日本"
    raw = "a日本b".encode()
    pieces = [raw[i : i + 1] for i in range(len(raw))]  # one byte per token
    released, matched, _ = feed(pieces, stops=(stop,))
    assert matched == stop and "".join(released) == "a"


def test_concatenation_equals_the_whole_text_without_stops():
    raw = "naïve café 😀 日本語\n\nend".encode()
    pieces = [raw[i : i + 3] for i in range(0, len(raw), 3)]
    released, matched, rest = feed(pieces, stops=("STOP",))
    assert matched is None
    assert "".join(released) + rest == raw.decode()

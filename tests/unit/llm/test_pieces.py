"""The LLM service sorts generated ids into stream pieces (text deltas, whole audio groups)."""

from __future__ import annotations

import pytest
from stepaudio.serving.v1 import llm_pb2

from services.llm.server import PieceSplitter, response_text
from services.models.text_tokenizer import TextTokenizer
from services.models.tiny.text_tokenizer import write_text_tokenizer

GROUP = [65536 + 3, 65536 + 7, 66560 + 1, 66560 + 2, 66560 + 3]  # one whole 2+3 group


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> TextTokenizer:
    folder = tmp_path_factory.mktemp("tokenizer")
    write_text_tokenizer(folder, model_max_length=4096)
    return TextTokenizer.from_folder(folder)


def kinds(pieces: list[llm_pb2.StreamPiece]) -> list[str | None]:
    return [piece.WhichOneof("kind") for piece in pieces]


def test_text_and_whole_groups_come_out_in_stream_order(tokenizer: TextTokenizer) -> None:
    text_ids = tokenizer.encode("hello there", add_bos=False)
    splitter = PieceSplitter(tokenizer)
    pieces = splitter.push([*text_ids, *GROUP[:3]])
    assert kinds(pieces) == ["text"]  # the group is not whole yet
    pieces = splitter.push([*GROUP[3:], *text_ids])
    assert kinds(pieces) == ["audio_group", "text"]
    assert list(pieces[0].audio_group.token_ids) == GROUP
    end = splitter.end(llm_pb2.FINISH_REASON_STOP)
    assert kinds(end) == ["end"] and not end[-1].end.HasField("malformed_audio")
    assert end[-1].end.finish_reason == llm_pb2.FINISH_REASON_STOP


def test_malformed_audio_is_named_at_the_end(tokenizer: TextTokenizer) -> None:
    splitter = PieceSplitter(tokenizer)
    pieces = splitter.push([*GROUP[:2], 70656 + 9, *GROUP[2:], 65536 + 4, 66560 + 5])
    assert kinds(pieces) == ["audio_group"]  # a reserved id neither breaks nor joins a group
    assert list(pieces[0].audio_group.token_ids) == GROUP
    malformed = splitter.end(llm_pb2.FINISH_REASON_LENGTH)[-1].end.malformed_audio
    assert malformed.code == "invalid_audio_tokens" and malformed.invalid_ids == 3
    assert "1 id(s) outside the 5120 audio codes were skipped" in malformed.message
    assert "an incomplete audio group (2 of 5 ids) was dropped" in malformed.message


def test_text_pieces_add_up_to_the_decoded_text(tokenizer: TextTokenizer) -> None:
    ids = tokenizer.encode("你好, Step-Audio!", add_bos=False)
    splitter = PieceSplitter(tokenizer)
    pieces = [p for i in ids for p in splitter.push([i, GROUP[0]])]
    pieces += splitter.end(llm_pb2.FINISH_REASON_STOP)
    assert response_text(pieces) == tokenizer.decode(ids)

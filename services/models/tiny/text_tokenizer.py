"""A tiny SentencePiece ``tokenizer.model`` laid out like Step-Audio's (74 752 pieces).

Ids as the real file: 0 <unk>, 1 <s>, 2 </s>, 3 <|EOT|>, 4 <|BOT|>, then text pieces (a small
model trained here, with byte fallback so any text encodes), unused filler up to 65 535, and
``<audio_0>`` … ``<audio_9215>`` at 65 536 + N as user-defined pieces.
"""

from __future__ import annotations

import io
import struct
from pathlib import Path

import sentencepiece as spm

from services.models.audio_tokens import AUDIO_ID_OFFSET
from services.models.prompts import TTS_SYSTEM_PROMPTS

VOCAB_SIZE = 74752
TEXT_PIECES = 1200  # trained pieces incl. specials and the 256 byte pieces
_PIECE_NORMAL, _PIECE_USER_DEFINED, _PIECE_UNUSED = 1, 4, 5

CORPUS_LINES = [
    "Hello there. What is the weather like today?",
    "This is the default voice of the tiny test pack.",
    "The quick brown fox jumps over the lazy dog.",
    "Please tell me a short story about the sea and the moon.",
    "I would like a cup of tea, thank you very much.",
    "human assistant system",
    "你好，我是你的朋友，我叫小明，你叫什么名字？",
    "那等我们到海洋馆之后，给妈妈买个礼物，好不好呀？",
    "适配用户的语言，用简短口语化的文字回答",
    "今天天气怎么样？我们去公园散步吧。",
    "0123456789 one two three four five six seven eight nine ten",
]


def _corpus() -> str:
    lines = CORPUS_LINES + list(TTS_SYSTEM_PROMPTS.values())
    return "\n".join(lines * 8) + "\n"


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _piece_record(piece: str, score: float, kind: int) -> bytes:
    """One ``ModelProto.pieces`` entry, serialised by hand (field 1 of ModelProto).

    The sentencepiece wheel's own model_pb2 pins a newer protobuf than the gRPC stubs allow,
    and repeated fields append when serialised messages are concatenated, so writing the
    few bytes directly is the dependable way to extend a trained model.
    """
    text = piece.encode("utf-8")
    body = b"\x0a" + _varint(len(text)) + text + b"\x15" + struct.pack("<f", score)
    body += b"\x18" + _varint(kind)
    return b"\x0a" + _varint(len(body)) + body


def build_tokenizer_model() -> bytes:
    """The tokenizer.model bytes; deterministic (single-threaded training on a fixed corpus)."""
    model = io.BytesIO()
    spm.SentencePieceTrainer.Train(
        sentence_iterator=iter(_corpus().splitlines()),
        model_writer=model,
        model_type="bpe",
        vocab_size=TEXT_PIECES,
        character_coverage=1.0,
        byte_fallback=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        split_digits=True,
        user_defined_symbols=["<|EOT|>", "<|BOT|>"],
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        num_threads=1,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    data = model.getvalue()
    trained = spm.SentencePieceProcessor(model_proto=data).GetPieceSize()
    filler = b"".join(
        _piece_record(f"<reserved_{i}>", 0.0, _PIECE_UNUSED)
        for i in range(trained, AUDIO_ID_OFFSET)
    )
    audio = b"".join(
        _piece_record(f"<audio_{n}>", 0.0, _PIECE_USER_DEFINED)
        for n in range(VOCAB_SIZE - AUDIO_ID_OFFSET)
    )
    return data + filler + audio


def write_text_tokenizer(folder: Path, *, model_max_length: int) -> None:
    import json

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer.model").write_bytes(build_tokenizer_model())
    config = {
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": "<s>",
        "eos_token": "</s>",
        "pad_token": "<unk>",
        "unk_token": "<unk>",
        "legacy": False,
        "model_max_length": model_max_length,
        "padding_side": "left",
        "tokenizer_class": "LlamaTokenizer",
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")

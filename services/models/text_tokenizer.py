"""The Step1 text tokenizer: SentencePiece ``tokenizer.model`` from the checkpoint folder.

Upstream loads it as a LlamaTokenizer (``add_bos_token: true``, ``legacy: false``). We call
SentencePiece directly: ``encode`` = [BOS] + pieces of the text with SentencePiece's own dummy
prefix; user-defined pieces (``<|BOT|>``, ``<|EOT|>``, ``<audio_N>``) match as single ids.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import sentencepiece as spm

from services.models.audio_tokens import AUDIO_ID_OFFSET, in_audio_block
from services.models.checkpoint import CheckpointError

TOKENIZER_FILE = "tokenizer.model"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
BOS_ID = 1
EOT_ID = 3
BOT_ID = 4
SPECIAL_PIECES = {EOT_ID: "<|EOT|>", BOT_ID: "<|BOT|>"}


class TextTokenizer:
    def __init__(self, processor: spm.SentencePieceProcessor, *, add_bos: bool = True) -> None:
        self._sp = processor
        self.add_bos = add_bos
        self._check_special_pieces()

    @classmethod
    def from_folder(cls, folder: Path | str) -> TextTokenizer:
        folder = Path(folder)
        path = folder / TOKENIZER_FILE
        if not path.is_file():
            raise CheckpointError(f"{path} is missing (the SentencePiece text tokenizer)")
        processor = spm.SentencePieceProcessor()
        try:
            processor.Load(str(path))
        except (OSError, RuntimeError) as exc:
            raise CheckpointError(f"{path}: not a SentencePiece model ({exc})") from exc
        add_bos = True
        config_path = folder / TOKENIZER_CONFIG_FILE
        if config_path.is_file():
            add_bos = bool(json.loads(config_path.read_text()).get("add_bos_token", True))
        return cls(processor, add_bos=add_bos)

    def _check_special_pieces(self) -> None:
        for token_id, piece in SPECIAL_PIECES.items():
            if self._sp.IdToPiece(token_id) != piece:
                raise CheckpointError(
                    f"tokenizer.model: id {token_id} is {self._sp.IdToPiece(token_id)!r}, "
                    f"Step-Audio needs {piece!r}"
                )

    @property
    def vocab_size(self) -> int:
        return int(self._sp.GetPieceSize())

    def encode(self, text: str, *, add_bos: bool | None = None) -> list[int]:
        ids = list(self._sp.EncodeAsIds(text))
        return [BOS_ID, *ids] if (self.add_bos if add_bos is None else add_bos) else ids

    def encode_continuation(self, text: str) -> list[int]:
        """Ids of ``text`` as it would appear mid-sequence (no BOS, no dummy prefix).

        Upstream's trick: encode "\\n" + text and drop the ids that "\\n" alone produces.
        """
        prefix = self.encode("\n")
        ids = self.encode("\n" + text)
        return ids[len(prefix) :]

    def decode(self, ids: Iterable[int], *, skip_audio: bool = True) -> str:
        """Text of the non-audio ids; audio-block ids are dropped (or kept as ``<audio_N>``)."""
        kept = [i for i in ids if not (skip_audio and in_audio_block(i))]
        return str(self._sp.DecodeIds(kept))

    def piece(self, token_id: int) -> str:
        return str(self._sp.IdToPiece(token_id))

    def audio_id_of(self, code: int) -> int:
        return AUDIO_ID_OFFSET + code


class IncrementalDecoder:
    """Text deltas of a growing id sequence; holds back an unfinished UTF-8 character.

    SentencePiece byte-fallback pieces can split a character over several ids; decoding the
    whole text and emitting the new suffix keeps deltas correct at any cut.
    """

    def __init__(self, tokenizer: TextTokenizer) -> None:
        self._tokenizer = tokenizer
        self._text_ids: list[int] = []
        self._emitted = 0

    def push(self, ids: Iterable[int]) -> str:
        self._text_ids.extend(i for i in ids if not in_audio_block(i))
        text = self._tokenizer.decode(self._text_ids)
        if text.endswith("\ufffd"):  # an incomplete multi-byte character
            return ""
        delta, self._emitted = text[self._emitted :], len(text)
        return delta

    def flush(self) -> str:
        text = self._tokenizer.decode(self._text_ids)
        delta, self._emitted = text[self._emitted :], len(text)
        return delta

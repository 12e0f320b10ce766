"""The Step-Audio audio-token id space shared by the tokenizer, the LMs and token2wav.

Audio code N in [0, 5120) (linguistic 0..1023, semantic 1024..5119) is LLM id 65536 + N and
the text piece ``<audio_N>``. Speech is 5 ids per 120 ms group: 2 linguistic then 3 semantic.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

AUDIO_ID_OFFSET = 65536
LINGUISTIC_CODES = 1024
SEMANTIC_CODES = 4096
AUDIO_CODES = LINGUISTIC_CODES + SEMANTIC_CODES  # 5120
SEMANTIC_ID_OFFSET = AUDIO_ID_OFFSET + LINGUISTIC_CODES
GROUP_LINGUISTIC = 2
GROUP_SEMANTIC = 3
GROUP_SIZE = GROUP_LINGUISTIC + GROUP_SEMANTIC  # 5 ids per group
GROUP_SECONDS = 0.12
TOKENS_PER_SECOND = GROUP_SIZE / GROUP_SECONDS  # 41.67

_AUDIO_PIECE = re.compile(r"<audio_(\d+)>")


def is_audio_id(token_id: int) -> bool:
    return AUDIO_ID_OFFSET <= token_id < AUDIO_ID_OFFSET + AUDIO_CODES


def in_audio_block(token_id: int) -> bool:
    """Any id of the LLM's audio block (65536 and up), the 4096 reserved ones included."""
    return token_id >= AUDIO_ID_OFFSET


def interleave(linguistic: Sequence[int], semantic: Sequence[int]) -> list[int]:
    """LLM ids for whole 2+3 groups of codes; codes past the last whole group are dropped."""
    groups = min(len(linguistic) // GROUP_LINGUISTIC, len(semantic) // GROUP_SEMANTIC)
    ids: list[int] = []
    for g in range(groups):
        ids += [AUDIO_ID_OFFSET + int(c) for c in linguistic[2 * g : 2 * g + 2]]
        ids += [SEMANTIC_ID_OFFSET + int(c) for c in semantic[3 * g : 3 * g + 3]]
    return ids


def ids_to_text(ids: Iterable[int]) -> str:
    """``<audio_N>`` text form of audio ids, as upstream's merge_vq0206_to_token_str."""
    return "".join(f"<audio_{i - AUDIO_ID_OFFSET}>" for i in ids)


def text_to_ids(text: str) -> list[int]:
    return [AUDIO_ID_OFFSET + int(n) for n in _AUDIO_PIECE.findall(text)]


def ids_to_codes(ids: Iterable[int]) -> list[int]:
    """Flow-model input codes (id - 65536), validating the range."""
    codes = []
    for i in ids:
        if not is_audio_id(i):
            raise ValueError(
                f"token id {i} is not an audio id (65536..{AUDIO_ID_OFFSET + AUDIO_CODES - 1})"
            )
        codes.append(i - AUDIO_ID_OFFSET)
    return codes

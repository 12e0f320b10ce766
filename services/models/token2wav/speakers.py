"""Speaker prompts, a persistent speaker store and a reader for upstream's `speakers/` folder."""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from services.common.audio import AudioError, decode_audio_file
from services.models.audio_tokens import ids_to_codes

SPEAKERS_INFO_FILE = "speakers_info.json"
STORE_SUFFIX = ".speaker.npz"
_STORE_VERSION = 1
_MAX_NAME_CHARS = 200


@dataclass(frozen=True)
class SpeakerPrompt:
    """What the flow conditions on: prompt codes (0..5119), prompt mel (T, 80), x-vector (192,)."""

    prompt_codes: np.ndarray  # int64 (n,)
    prompt_mel: np.ndarray  # float32 (T, mel bins)
    embedding: np.ndarray  # float32 (embedding dim,)

    @property
    def n_prompt_frames(self) -> int:
        return int(self.prompt_mel.shape[0])


@dataclass(frozen=True)
class Speaker:
    """A registered voice as the store keeps it (`prompt_ids` are LLM ids, 65536 + code)."""

    name: str
    prompt_text: str
    prompt_ids: list[int]
    prompt_mel: np.ndarray  # float32 (T, 80)
    embedding: np.ndarray  # float32 (192,)

    def to_prompt(self) -> SpeakerPrompt:
        return SpeakerPrompt(
            prompt_codes=np.asarray(ids_to_codes(self.prompt_ids), dtype=np.int64),
            prompt_mel=self.prompt_mel,
            embedding=self.embedding,
        )

    @classmethod
    def from_prompt(
        cls, name: str, prompt_text: str, prompt_ids: Sequence[int], prompt: SpeakerPrompt
    ) -> Speaker:
        return cls(
            name=name,
            prompt_text=prompt_text,
            prompt_ids=[int(i) for i in prompt_ids],
            prompt_mel=prompt.prompt_mel,
            embedding=prompt.embedding,
        )


class UnknownSpeakerError(KeyError):
    """No speaker of that name in the store."""

    def __init__(self, name: str, directory: Path) -> None:
        super().__init__(name)
        self.name = name
        self.directory = directory

    def __str__(self) -> str:
        return f"unknown speaker {self.name!r} (not in {self.directory})"


def speaker_file_name(name: str) -> str:
    """A safe, unique file name for any unicode speaker name (readable ASCII part + hash)."""
    readable = re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_")[:40] or "speaker"
    digest = hashlib.sha256(name.encode("utf-8")).hexdigest()[:16]
    return f"{readable}-{digest}{STORE_SUFFIX}"


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not name.strip():
        raise ValueError("speaker name must be a non-empty string")
    if len(name) > _MAX_NAME_CHARS or any(ord(c) < 32 for c in name):
        raise ValueError(f"speaker name {name[:40]!r}… is too long or has control characters")
    return name


def _check_speaker(speaker: Speaker) -> None:
    _check_name(speaker.name)
    ids_to_codes(speaker.prompt_ids)  # raises ValueError on non-audio ids
    mel, emb = np.asarray(speaker.prompt_mel), np.asarray(speaker.embedding)
    if mel.ndim != 2 or mel.shape[0] == 0:
        raise ValueError(f"prompt_mel must be (frames, bins), got {mel.shape}")
    if emb.ndim != 1 or emb.size == 0:
        raise ValueError(f"embedding must be 1-D, got {emb.shape}")
    if not (np.isfinite(mel).all() and np.isfinite(emb).all()):
        raise ValueError("prompt_mel / embedding contain NaN or infinity")


class SpeakerStore:
    """Speakers persisted as one `.npz` per name in `directory` (atomic tmp + rename writes)."""

    def __init__(self, directory: Path | str) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    def _path(self, name: str) -> Path:
        return self.directory / speaker_file_name(_check_name(name))

    def put(self, speaker: Speaker) -> None:
        _check_speaker(speaker)
        meta = {"version": _STORE_VERSION, "name": speaker.name, "prompt_text": speaker.prompt_text}
        target = self._path(speaker.name)
        fd, tmp_name = tempfile.mkstemp(dir=self.directory, prefix=".tmp-", suffix=".npz")
        try:
            with os.fdopen(fd, "wb") as handle:
                np.savez(
                    handle,
                    meta=np.array(json.dumps(meta, ensure_ascii=False)),
                    prompt_ids=np.asarray(speaker.prompt_ids, dtype=np.int64),
                    prompt_mel=np.asarray(speaker.prompt_mel, dtype=np.float32),
                    embedding=np.asarray(speaker.embedding, dtype=np.float32),
                )
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp_name, target)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise

    def get(self, name: str) -> Speaker:
        path = self._path(name)
        if not path.is_file():
            raise UnknownSpeakerError(name, self.directory)
        speaker = self._read(path)
        if speaker.name != name:  # a hash collision; never expected in practice
            raise UnknownSpeakerError(name, self.directory)
        return speaker

    def list(self) -> list[str]:
        return sorted(self._read(path).name for path in self.directory.glob(f"*{STORE_SUFFIX}"))

    def delete(self, name: str) -> None:
        path = self._path(name)
        if not path.is_file():
            raise UnknownSpeakerError(name, self.directory)
        path.unlink()

    def __contains__(self, name: str) -> bool:
        return self._path(name).is_file()

    @staticmethod
    def _read(path: Path) -> Speaker:
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(str(data["meta"]))
                return Speaker(
                    name=meta["name"],
                    prompt_text=meta["prompt_text"],
                    prompt_ids=[int(i) for i in data["prompt_ids"]],
                    prompt_mel=data["prompt_mel"].astype(np.float32),
                    embedding=data["embedding"].astype(np.float32),
                )
        except (OSError, ValueError, KeyError) as exc:
            raise ValueError(f"{path}: unreadable speaker file: {exc}") from exc


def load_upstream_speakers(directory: Path | str) -> list[tuple[str, str, np.ndarray, int]]:
    """Read upstream's `speakers/` layout: `speakers_info.json` (name → prompt text) and
    `{name}_prompt.wav`. Returns (name, prompt_text, float32 mono wav, sample_rate_hz) triples
    for the caller to tokenize and register."""
    directory = Path(directory)
    info_path = directory / SPEAKERS_INFO_FILE
    if not info_path.is_file():
        raise FileNotFoundError(f"{info_path}: missing speaker registry")
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{info_path}: not valid JSON: {exc}") from exc
    if not isinstance(info, dict):
        raise ValueError(f"{info_path}: expected an object mapping speaker name to prompt text")
    speakers = []
    for name, text in info.items():
        wav_path = directory / f"{name}_prompt.wav"
        if not wav_path.is_file():
            raise FileNotFoundError(f"{wav_path}: missing prompt audio for speaker {name!r}")
        try:
            wav, rate = decode_audio_file(wav_path)
        except AudioError as exc:
            raise AudioError(exc.code, f"{wav_path}: {exc}") from exc
        speakers.append((name, str(text), wav, rate))
    return speakers

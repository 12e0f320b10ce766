"""Dev tool (not CI): the project against upstream Step-Audio's own code on the tiny pack.

Checks (issue 22): (a) tokenizing clips recorded at 22.05 / 24 / 44.1 / 48 kHz gives the same ids
as upstream's ``StepAudioTokenizer.wav2token`` (Chat path without trim, prompt path with trim;
the tiny Paraformer config sets dither 0), (b) upstream's ``CosyVoice`` loads the tiny vocoder
folder as written, and with the same starting noise the voice-clone flow mel equals the
project's (both flows in bf16, as upstream casts it).

Nothing of upstream is vendored: point ``--upstream`` at a checkout of stepfun-ai/Step-Audio.
The two sides run in two interpreters:

    # 1. the project side (project venv): clips, ids, prompt features, noise, mel
    $PY loadtests/upstream_compare.py project --pack /tmp/pack --work /tmp/cmp
    # 2. upstream's side (a throwaway venv with torch 2.9.1, torchaudio 2.9, openai-whisper,
    #    onnxruntime, librosa 0.10.2.post1, hyperpyyaml, omegaconf 2.3, diffusers 0.29.2,
    #    conformer 0.3.2, einops, scipy, soundfile), then the comparison
    /tmp/ta/bin/python loadtests/upstream_compare.py upstream --upstream /tmp/upstream \
        --pack /tmp/pack --work /tmp/cmp

Shims on upstream's side, for a CPU-only machine with torchaudio 2.9 (none changes numerics):
``torchaudio.load/save`` through soundfile as float32 WAV (torchaudio 2.3 also writes float32,
upstream.md §3.2; 2.9 needs torchcodec), ``.cuda()`` as a no-op and ``device=0`` as the CPU,
an empty ``funasr`` module (funasr_detach imports the PyPI package for nothing), and
``torch.randn_like`` in the flow returning the project's noise.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import types
from pathlib import Path

import numpy as np

CLIP_TEXT = "The quick brown fox jumps over the lazy dog, twice, at dawn."
CLIP_RATES = (22_050, 24_000, 44_100, 48_000)
VOICE_CLONE_RATE = 44_100
N_TIMESTEPS = 10
TEST_CODES_SEED = 7


def make_clips(work: Path) -> dict[int, Path]:
    """espeak-ng speaks at 22.05 kHz; the other rates are that recording converted once."""
    import soundfile as sf
    import soxr

    source = work / "espeak.wav"
    subprocess.run(["espeak-ng", "-w", str(source), CLIP_TEXT], check=True)
    audio, rate = sf.read(source, dtype="float32")
    clips = {}
    for target in CLIP_RATES:
        clip = audio if target == rate else soxr.resample(audio, rate, target, quality="VHQ")
        clips[target] = work / f"clip_{target}.wav"
        sf.write(clips[target], clip, target, subtype="PCM_16")
    return clips


def project_side(pack: Path, work: Path) -> None:
    import soundfile as sf
    import torch

    from services.models.audio_tokenizer.tokenizer import AudioTokenizer
    from services.models.audio_tokens import ids_to_codes
    from services.models.layout import VOCODER_DIR
    from services.models.token2wav.model import Token2Wav

    work.mkdir(parents=True, exist_ok=True)
    clips = make_clips(work)
    tokenizer = AudioTokenizer.from_pretrained(pack / "Step-Audio-Tokenizer")
    result: dict[str, np.ndarray] = {}
    for rate, path in clips.items():
        audio, file_rate = sf.read(path, dtype="float32")
        assert file_rate == rate
        result[f"chat_{rate}"] = np.array(tokenizer.tokenize(audio, rate, trim=False))
        result[f"prompt_{rate}"] = np.array(tokenizer.tokenize(audio, rate, trim=True))

    model = Token2Wav.from_pretrained(
        pack / "Step-Audio-TTS-3B" / VOCODER_DIR, dtype=torch.bfloat16
    )
    audio, rate = sf.read(clips[VOICE_CLONE_RATE], dtype="float32")
    prompt_ids = result[f"prompt_{rate}"].tolist()
    speaker = model.prepare_speaker(audio, rate, prompt_ids)
    codes = np.random.default_rng(TEST_CODES_SEED).integers(0, 5120, 60)
    flow = model.flow
    frames = flow.mel_frames(len(codes))
    with torch.inference_mode():
        conditions = flow.conditions(
            torch.from_numpy(codes)[None],
            torch.from_numpy(np.asarray(ids_to_codes(prompt_ids)))[None],
            torch.from_numpy(speaker.prompt_mel)[None],
            torch.from_numpy(speaker.embedding)[None],
            [(len(codes), frames)],
        )
        noise = torch.randn(conditions.mu.shape, generator=torch.Generator().manual_seed(1))
        mel = flow.sample(conditions, noise, N_TIMESTEPS)
    result.update(
        codes=codes,
        noise=noise.numpy(),
        mel=mel[0].numpy(),
        prompt_ids=np.asarray(prompt_ids),
        prompt_mel=speaker.prompt_mel,
        embedding=speaker.embedding,
    )
    np.savez(work / "project.npz", **result)


def _install_shims(upstream: Path) -> None:
    import soundfile as sf
    import torch
    import torchaudio

    def save(target, tensor, rate, format=None, **_):  # noqa: A002, ARG001
        sf.write(target, tensor.detach().cpu().numpy().T, rate, format="WAV", subtype="FLOAT")

    def load(source, **_):
        data, rate = sf.read(source, dtype="float32", always_2d=True)
        return torch.from_numpy(data.T.copy()), rate

    torchaudio.save, torchaudio.load = save, load
    torch.nn.Module.cuda = lambda self, *a, **k: self  # noqa: ARG005
    torch.Tensor.cuda = lambda self, *a, **k: self  # noqa: ARG005
    sys.modules.setdefault("funasr", types.ModuleType("funasr"))
    sys.path.insert(0, str(upstream))


def upstream_side(upstream: Path, pack: Path, work: Path) -> dict[str, object]:
    _install_shims(upstream)
    import soundfile as sf
    import torch
    import torchaudio
    from cosyvoice.cli.cosyvoice import CosyVoice
    from tokenizer import StepAudioTokenizer

    ours = dict(np.load(work / "project.npz"))
    tokenizer = StepAudioTokenizer(str(pack / "Step-Audio-Tokenizer"))
    infer_encoder = tokenizer.funasr_model.infer_encoder
    tokenizer.funasr_model.infer_encoder = lambda **k: infer_encoder(**{**k, "device": "cpu"})
    report: dict[str, object] = {}
    for rate in CLIP_RATES:
        audio, _ = sf.read(work / f"clip_{rate}.wav", dtype="float32")
        wav = torch.from_numpy(audio)[None]
        for kind, trim in (("chat", False), ("prompt", True)):
            theirs = tokenizer.wav2token(wav, rate, enable_trim=trim)[0]
            mine = ours[f"{kind}_{rate}"].tolist()
            same = sum(a == b for a, b in zip(theirs, mine, strict=False))
            report[f"{kind}_{rate}"] = {
                "ids": len(theirs),
                "equal": theirs == mine,
                "matching": f"{same}/{max(len(theirs), len(mine))}",
            }

    folder = pack / "Step-Audio-TTS-3B" / "CosyVoice-300M-25Hz"
    cosy = CosyVoice(str(folder))  # upstream's own loader on the folder as written
    audio, rate = sf.read(work / f"clip_{VOICE_CLONE_RATE}.wav", dtype="float32")
    wav = torch.from_numpy(audio)[None]
    wav_16k = torchaudio.transforms.Resample(rate, 16000)(wav)
    wav_22k = torchaudio.transforms.Resample(rate, 22050)(wav)
    feat, feat_len = cosy.frontend._extract_speech_feat(wav_22k)
    embedding = cosy.frontend._extract_spk_embedding(wav_16k)
    prompt_code = tokenizer.wav2token(wav, rate)[0]
    mel_diff = np.abs(feat[0].numpy() - ours["prompt_mel"])
    report["prompt_mel_max_diff"] = float(mel_diff.max())
    report["prompt_mel_p999_diff"] = float(np.quantile(mel_diff, 0.999))
    # log-mel differences are largest where the mel energy is tiny (log amplifies)
    report["prompt_mel_at_max_diff"] = float(feat[0].numpy().flat[mel_diff.argmax()])
    report["embedding_max_diff"] = float(np.abs(embedding[0].numpy() - ours["embedding"]).max())

    report["prompt_ids_equal"] = prompt_code == ours["prompt_ids"].tolist()
    noise = torch.from_numpy(ours["noise"])
    randn_like = torch.randn_like  # the flow's only draw: z = randn_like(mu)
    torch.randn_like = lambda like, *a, **k: noise.to(like.dtype)  # noqa: ARG005

    def flow_mel(feat: torch.Tensor, embedding: torch.Tensor, dtype: torch.dtype) -> np.ndarray:
        """Upstream's flow (bf16 since CosyVoice() cast it; its U-Net casts to bf16 itself)."""
        with torch.inference_mode():
            mel = cosy.model.flow.inference(
                token=torch.from_numpy(ours["codes"])[None],
                token_len=torch.tensor([len(ours["codes"])], dtype=torch.int32),
                prompt_token=torch.tensor([prompt_code], dtype=torch.long) - 65536,
                prompt_token_len=torch.tensor([len(prompt_code)], dtype=torch.int32),
                prompt_feat=feat.to(dtype),
                prompt_feat_len=torch.tensor([feat.shape[1]], dtype=torch.int32),
                embedding=embedding.to(dtype),
            )
        return mel[0].float().numpy()

    ours_feat = torch.from_numpy(ours["prompt_mel"])[None]
    ours_embedding = torch.from_numpy(ours["embedding"])[None]
    runs = {
        # upstream end to end (its features, flow in bf16 as CosyVoice() casts it)
        "mel_bf16_upstream_features": (flow_mel(feat, embedding, torch.bfloat16), "mel"),
        # the flow alone: upstream's flow on the project's features
        "mel_bf16_project_features": (flow_mel(ours_feat, ours_embedding, torch.bfloat16), "mel"),
    }
    torch.randn_like = randn_like
    for name, (theirs, key) in runs.items():
        if theirs.shape != ours[key].shape:
            report[name] = f"shape {theirs.shape} != {ours[key].shape}"
        else:
            report[name + "_max_diff"] = float(np.abs(theirs - ours[key]).max())
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("side", choices=("project", "upstream"))
    parser.add_argument("--pack", type=Path, required=True, help="stepaudio models tiny --out")
    parser.add_argument("--work", type=Path, required=True, help="clips and results")
    parser.add_argument("--upstream", type=Path, help="a Step-Audio checkout (upstream side)")
    args = parser.parse_args()
    if args.side == "project":
        project_side(args.pack, args.work)
        return
    report = upstream_side(args.upstream, args.pack, args.work)
    text = json.dumps(report, indent=2) + "\n"
    (args.work / "report.json").write_text(text)  # funasr_detach prints tables to stdout
    sys.stdout.write(text)


if __name__ == "__main__":
    main()

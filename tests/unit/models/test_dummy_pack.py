"""The dummy pack's writers: shrunken sizes on the CPU, loaded by the real loaders.

The released sizes are written only on a GPU host (`stepaudio models dummy`); here the same
code paths write small folders, and the released sizes are checked by counting parameters.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from services.models import layout
from services.models.audio_tokenizer.tokenizer import AudioTokenizer
from services.models.audio_tokens import AUDIO_ID_OFFSET
from services.models.dummy import DummySizes, write_dummy_pack
from services.models.step1.config import Step1Config
from services.models.step1.model import Step1ForCausalLM
from services.models.tiny.audio_tokenizer import encoder_shapes
from services.models.token2wav import SpeakerPrompt, Token2Wav
from services.models.token2wav.config import load_config
from services.models.token2wav.features import SpeakerEncoder
from services.models.token2wav.flow import MaskedDiffWithXvec
from services.models.token2wav.hift import HiFTGenerator


@pytest.fixture(scope="module")
def dummy_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("dummy")
    write_dummy_pack(root, DummySizes.shrunk(), seed=0)
    return root


def test_lm_folders_load_at_the_written_shapes(dummy_root: Path) -> None:
    sizes = DummySizes.shrunk()
    for folder, shape in ((layout.tts_dir, sizes.tts), (layout.chat_dir, sizes.chat)):
        model = Step1ForCausalLM.from_pretrained(folder(dummy_root))
        assert model.config.hidden_size == shape["hidden_size"]
        assert model.config.num_hidden_layers == shape["num_hidden_layers"]
        assert model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()
        logits = model(torch.tensor([[1, 65536 + 7, 65536 + 9]]))
        assert torch.isfinite(logits).all()
    # the TTS stand-in is steered to audio ids, the Chat stand-in to text
    tts = Step1ForCausalLM.from_pretrained(layout.tts_dir(dummy_root))
    last = tts(torch.tensor([[1, 4, AUDIO_ID_OFFSET + 3]]))[0, -1]
    assert AUDIO_ID_OFFSET <= int(last.argmax()) < AUDIO_ID_OFFSET + 5120


def test_vocoder_folders_load_and_decode(dummy_root: Path) -> None:
    for music in (False, True):
        folder = layout.vocoder_dir(dummy_root, music=music)
        config = load_config(folder)
        assert config.flow.encoder.output_size == 48  # the shrunk size, not the tiny pack's 32
        model = Token2Wav.from_pretrained(folder)
        rng = np.random.default_rng(0)
        prompt = SpeakerPrompt(
            prompt_codes=rng.integers(0, 5120, 20),
            prompt_mel=rng.standard_normal((41, 80)).astype(np.float32) - 5,
            embedding=SpeakerEncoder(folder / "campplus.onnx").embed(
                rng.standard_normal(16_000).astype(np.float32) * 0.1
            ),
        )
        assert prompt.embedding.shape == (192,) and np.isfinite(prompt.embedding).all()
        codes = rng.integers(0, 5120, 25).tolist()
        audio = model.synthesize(codes, prompt, generator=torch.Generator().manual_seed(0))
        assert audio.size == model.mel_frames(25) * 256 and np.isfinite(audio).all()


def test_tokenizer_folder_loads_and_tokenizes(dummy_root: Path) -> None:
    tokenizer = AudioTokenizer.from_pretrained(layout.tokenizer_dir(dummy_root))
    t = np.arange(32_000) / 16_000
    speech = (0.3 * np.sin(2 * np.pi * 180 * t) * (1 + np.sin(2 * np.pi * 3 * t))).astype(
        np.float32
    )
    codes = tokenizer.codes(speech, 16_000)
    assert codes.ids and all(AUDIO_ID_OFFSET <= i < AUDIO_ID_OFFSET + 5120 for i in codes.ids)
    assert len(set(codes.ids)) > 1


def test_released_sizes() -> None:
    sizes = DummySizes().with_chat_layers(2)
    with torch.device("meta"):
        tts = Step1ForCausalLM(Step1Config(**sizes.tts))
        chat = Step1ForCausalLM(Step1Config(**sizes.chat))
    # bf16 bytes = the released index's metadata.total_size (docs/upstream.md)
    assert 2 * sum(p.numel() for p in tts.state_dict().values()) == 7_059_412_992
    per_layer = sum(p.numel() for n, p in chat.state_dict().items() if ".layers.0." in n)
    embeddings = 2 * 74_752 * 12_288
    assert 88 * per_layer + embeddings == pytest.approx(263_893_180_416 / 2, rel=0.001)
    # the vocoder yaml at recipe size: flow 105.4 M, HiFT 20.46 M (docs/gpu-results.md)
    from services.models.dummy import vocoder_yaml
    from services.models.token2wav.config import parse_config
    from services.models.token2wav.yaml_loader import load_hyperpyyaml_safe

    config = parse_config(load_hyperpyyaml_safe(vocoder_yaml("x", sizes.vocoder)))
    with torch.device("meta"):
        flow = sum(p.numel() for p in MaskedDiffWithXvec(config.flow).state_dict().values())
        hift = sum(p.numel() for p in HiFTGenerator(config.hift).state_dict().values())
    assert round(flow / 1e6, 1) == 105.4 and round(hift / 1e6, 2) == 20.46
    # Paraformer-large encoder: 50 SANM blocks at 512
    encoder = sum(math.prod(s) for s in encoder_shapes(sizes.paraformer).values())
    assert 150e6 < encoder < 180e6

"""The tiny vocoder folders: real layout, upstream tensor names, valid ONNX, same bytes per seed."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch

from services.models.tiny.token2wav import VERSION_MARKER, write_tiny_token2wav

FILES = (
    "cosyvoice.yaml",
    "flow.pt",
    "hift.pt",
    "campplus.onnx",
    "speech_tokenizer_v1.onnx",
    VERSION_MARKER,
)

# names taken from upstream's module structure (Step-Audio cosyvoice/**, strict load)
UPSTREAM_FLOW_KEYS = (
    "input_embedding.weight",
    "spk_embed_affine_layer.weight",
    "encoder.embed.out.0.weight",
    "encoder.embed.out.1.bias",
    "encoder.after_norm.weight",
    "encoder.encoders.0.self_attn.linear_pos.weight",
    "encoder.encoders.0.self_attn.pos_bias_u",
    "encoder.encoders.1.feed_forward.w_2.bias",
    "encoder.encoders.1.norm_mha.weight",
    "encoder_proj.weight",
    "length_regulator.model.6.weight",
    "decoder.estimator.time_mlp.linear_1.weight",
    "decoder.estimator.down_blocks.0.0.block1.block.0.weight",
    "decoder.estimator.down_blocks.0.0.mlp.1.weight",
    "decoder.estimator.down_blocks.0.1.0.attn1.to_q.weight",
    "decoder.estimator.down_blocks.0.1.0.attn1.to_out.0.bias",
    "decoder.estimator.down_blocks.0.1.0.ff.net.0.proj.weight",
    "decoder.estimator.down_blocks.0.1.0.ff.net.2.weight",
    "decoder.estimator.down_blocks.0.2.conv.weight",
    "decoder.estimator.down_blocks.1.2.weight",
    "decoder.estimator.mid_blocks.0.0.res_conv.weight",
    "decoder.estimator.up_blocks.0.2.conv.weight",
    "decoder.estimator.final_block.block.1.weight",
    "decoder.estimator.final_proj.weight",
)
UPSTREAM_HIFT_KEYS = (
    "m_source.l_linear.weight",
    "conv_pre.weight_g",
    "conv_pre.weight_v",
    "ups.1.weight_v",
    "source_downs.0.weight",
    "source_resblocks.1.convs1.2.weight_g",
    "source_resblocks.0.activations2.0.alpha",
    "resblocks.5.convs2.0.bias",
    "conv_post.weight_v",
    "f0_predictor.condnet.0.weight_v",
    "f0_predictor.condnet.8.weight_g",
    "f0_predictor.classifier.weight",
)


def _digests(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_both_folders_have_the_released_layout(tts_folder: Path) -> None:
    for name in ("CosyVoice-300M-25Hz", "CosyVoice-300M-25Hz-Music"):
        for file in FILES:
            assert (tts_folder / name / file).is_file(), f"{name}/{file}"
    total = sum(p.stat().st_size for p in tts_folder.rglob("*") if p.is_file())
    assert total < 15 * 2**20


def test_same_seed_same_bytes_other_seed_other_weights(tmp_path: Path, tts_folder: Path) -> None:
    write_tiny_token2wav(tmp_path / "a", seed=0)
    write_tiny_token2wav(tmp_path / "b", seed=1)
    assert _digests(tmp_path / "a") == _digests(tts_folder)
    other = _digests(tmp_path / "b")
    assert (
        other["CosyVoice-300M-25Hz/flow.pt"] != _digests(tts_folder)["CosyVoice-300M-25Hz/flow.pt"]
    )


def test_state_dicts_carry_upstream_tensor_names(vocoder_dir: Path) -> None:
    flow = torch.load(vocoder_dir / "flow.pt", weights_only=True)
    hift = torch.load(vocoder_dir / "hift.pt", weights_only=True)
    assert set(UPSTREAM_FLOW_KEYS) <= set(flow), set(UPSTREAM_FLOW_KEYS) - set(flow)
    assert set(UPSTREAM_HIFT_KEYS) <= set(hift), set(UPSTREAM_HIFT_KEYS) - set(hift)
    assert not any(k.endswith(".weight") and k.startswith("conv_pre") for k in hift)
    assert all(v.dtype == torch.float32 for v in flow.values())


def test_onnx_models_run_with_their_upstream_io(vocoder_dir: Path) -> None:
    campplus = onnxruntime.InferenceSession(str(vocoder_dir / "campplus.onnx"))
    feats = np.random.default_rng(0).standard_normal((1, 57, 80)).astype(np.float32)
    (embedding,) = campplus.run(None, {campplus.get_inputs()[0].name: feats})
    assert embedding.shape == (1, 192) and np.isfinite(embedding).all()

    tokenizer = onnxruntime.InferenceSession(str(vocoder_dir / "speech_tokenizer_v1.onnx"))
    assert [i.name for i in tokenizer.get_inputs()] == ["feats", "feats_length"]
    mel = np.zeros((1, 128, 40), dtype=np.float32)
    (indices,) = tokenizer.run(None, {"feats": mel, "feats_length": np.array([40], np.int32)})
    assert indices.shape == (1, 40)


@pytest.mark.parametrize("name", ["CosyVoice-300M-25Hz", "CosyVoice-300M-25Hz-Music"])
def test_marker_file_is_present(tts_folder: Path, name: str) -> None:
    assert (tts_folder / name / VERSION_MARKER).exists()

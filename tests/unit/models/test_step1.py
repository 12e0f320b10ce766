"""Step1 model: ALiBi-sqrt, KV-cache decoding, loading errors, sampling rules."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from services.models.checkpoint import CheckpointError
from services.models.step1 import (
    TTS_DEFAULTS,
    SamplingParams,
    Step1Config,
    Step1ForCausalLM,
    alibi_slopes,
    alibi_sqrt_bias,
    generate,
    repetition_banned_token,
    select_token,
)
from services.models.step1.sampling import filter_logits


def paper_slopes(n: int) -> list[float]:
    """The ALiBi authors' reference recursion (Press et al., attention_with_linear_biases)."""

    def power_of_2(n: int) -> list[float]:
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start * start**i for i in range(n)]

    if math.log2(n).is_integer():
        return power_of_2(n)
    closest = 2 ** math.floor(math.log2(n))
    return power_of_2(closest) + paper_slopes(2 * closest)[0::2][: n - closest]


@pytest.mark.parametrize("heads", [1, 4, 6, 8, 12, 48, 96])
def test_alibi_slopes_match_the_reference_recursion(heads: int) -> None:
    assert alibi_slopes(heads).tolist() == pytest.approx(paper_slopes(heads), rel=1e-6)


def test_alibi_slopes_of_the_released_shapes() -> None:
    tts = alibi_slopes(48).tolist()  # 32 slopes 2^(-k/4) then 16 slopes 2^(-m/8), m odd
    assert tts[:32] == pytest.approx([2 ** (-k / 4) for k in range(1, 33)])
    assert tts[32:] == pytest.approx([2 ** (-m / 8) for m in range(1, 32, 2)])


def test_alibi_sqrt_bias_against_explicit_loops() -> None:
    slopes = alibi_slopes(6)
    positions = torch.tensor([[3, 4], [0, 1]])
    bias = alibi_sqrt_bias(slopes, positions, key_count=5)
    for b in range(2):
        for h in range(6):
            for t in range(2):
                for j in range(5):
                    i = int(positions[b, t])
                    expected = -slopes[h].item() * math.sqrt(i - j) if j <= i else -math.inf
                    assert bias[b, h, t, j].item() == pytest.approx(expected, abs=1e-6)


def small_config(**overrides: int) -> Step1Config:
    values = {
        "hidden_size": 48,
        "intermediate_size": 80,
        "num_attention_heads": 6,  # not a power of two: exercises the slope extension
        "num_attention_groups": 2,
        "num_hidden_layers": 3,
        "vocab_size": 300,
        "max_seq_len": 512,
    }
    values.update(overrides)
    return Step1Config(**values)


def random_model(config: Step1Config, seed: int = 0) -> Step1ForCausalLM:
    torch.manual_seed(seed)
    model = Step1ForCausalLM(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.uniform_(0.5, 1.5)
            else:
                param.normal_(0, 0.3)
    return model.eval()


def naive_forward(model: Step1ForCausalLM, ids: list[int]) -> torch.Tensor:
    """Independent forward: explicit per-head loops, repeated KV heads, no SDPA, no cache."""
    cfg = model.config
    sd = {k: v.double() for k, v in model.state_dict().items()}
    slopes = paper_slopes(cfg.num_attention_heads)
    group = cfg.num_attention_heads // cfg.num_attention_groups
    n, d = len(ids), cfg.head_dim

    def rms(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + cfg.rms_norm_eps) * w

    x = sd["model.embed_tokens.weight"][ids]
    for layer in range(cfg.num_hidden_layers):
        p = f"model.layers.{layer}."
        h = rms(x, sd[p + "input_layernorm.weight"])
        q = h @ sd[p + "self_attn.q_proj.weight"].T
        k = h @ sd[p + "self_attn.k_proj.weight"].T
        v = h @ sd[p + "self_attn.v_proj.weight"].T
        out = torch.zeros(n, cfg.hidden_size, dtype=torch.float64)
        for head in range(cfg.num_attention_heads):
            kv = head // group
            qh, kh, vh = (
                q[:, head * d : (head + 1) * d],
                k[:, kv * d : (kv + 1) * d],
                v[:, kv * d : (kv + 1) * d],
            )
            scores = qh @ kh.T / math.sqrt(d)
            for i in range(n):
                for j in range(n):
                    scores[i, j] = (
                        scores[i, j] - slopes[head] * math.sqrt(i - j) if j <= i else -math.inf
                    )
            out[:, head * d : (head + 1) * d] = torch.softmax(scores, -1) @ vh
        x = x + out @ sd[p + "self_attn.o_proj.weight"].T
        h = rms(x, sd[p + "post_attention_layernorm.weight"])
        gate, up = h @ sd[p + "mlp.gate_proj.weight"].T, h @ sd[p + "mlp.up_proj.weight"].T
        x = x + (torch.nn.functional.silu(gate) * up) @ sd[p + "mlp.down_proj.weight"].T
    return rms(x, sd["model.norm.weight"]) @ sd["lm_head.weight"].T


def test_forward_matches_an_independent_implementation() -> None:
    model = random_model(small_config())
    ids = [5, 17, 42, 99, 3, 250, 7, 8]
    with torch.no_grad():
        logits = model(torch.tensor([ids]))[0].double()
    assert torch.allclose(logits, naive_forward(model, ids), atol=1e-4)


def test_kv_cache_decode_equals_full_forward_in_a_mixed_batch() -> None:
    model = random_model(small_config())
    generator = torch.Generator().manual_seed(1)
    sequences = [torch.randint(0, 300, (n,), generator=generator).tolist() for n in (9, 23, 14)]
    prompt_lengths = [4, 11, 1]
    cache = model.new_cache(slots=4, capacity=8)  # small capacity forces growth
    slot_of = [2, 0, 3]
    decoded: list[list[torch.Tensor]] = [[] for _ in sequences]
    with torch.no_grad():
        for index, (seq, plen) in enumerate(zip(sequences, prompt_lengths, strict=True)):
            logits = model(torch.tensor([seq[:plen]]), cache, torch.tensor([slot_of[index]]))
            decoded[index].extend(logits[0])
        # one token per live row per step, rows at different lengths
        for step in range(max(len(s) - p for s, p in zip(sequences, prompt_lengths, strict=True))):
            rows = [
                i
                for i, (s, p) in enumerate(zip(sequences, prompt_lengths, strict=True))
                if p + step < len(s)
            ]
            tokens = torch.tensor([[sequences[i][prompt_lengths[i] + step]] for i in rows])
            logits = model(tokens, cache, torch.tensor([slot_of[i] for i in rows]))
            for row, i in enumerate(rows):
                decoded[i].append(logits[row, 0])
        for index, seq in enumerate(sequences):
            full = model(torch.tensor([seq]))[0]
            diff = (torch.stack(decoded[index]) - full).abs().max().item()
            assert diff <= 1e-4, f"sequence {index}: max |cache - full| = {diff}"
    assert cache.lengths.tolist() == [23, 0, 9, 14]


def test_cache_refuses_sequences_beyond_max_seq_len() -> None:
    model = random_model(small_config(max_seq_len=16))
    cache = model.new_cache(1, capacity=4)
    with pytest.raises(ValueError, match="max_seq_len 16"):
        model(torch.zeros(1, 17, dtype=torch.long), cache, torch.tensor([0]))


def test_tiny_checkpoint_loads_with_the_real_layout(tiny_tts_lm: Path) -> None:
    config = json.loads((tiny_tts_lm / "config.json").read_text())
    assert config["architectures"] == ["Step1ForCausalLM"] and config["model_type"] == "step1"
    assert config["vocab_size"] == 74752 and "tie_word_embeddings" not in config
    index = json.loads((tiny_tts_lm / "model.safetensors.index.json").read_text())
    assert "lm_head.weight" in index["weight_map"]
    assert "model.layers.0.self_attn.q_proj.weight" in index["weight_map"]
    model = Step1ForCausalLM.from_pretrained(tiny_tts_lm)
    assert not torch.equal(model.lm_head.weight, model.model.embed_tokens.weight)  # untied


def copy_folder(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_renamed_tensor_fails_naming_the_tensor(tiny_chat_lm: Path, tmp_path: Path) -> None:
    folder = copy_folder(tiny_chat_lm, tmp_path / "broken")
    index_path = folder / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    shard = folder / index["weight_map"]["model.norm.weight"]
    tensors = load_file(str(shard))
    tensors["model.final_norm.weight"] = tensors.pop("model.norm.weight")
    save_file(tensors, str(shard))
    index["weight_map"]["model.final_norm.weight"] = index["weight_map"].pop("model.norm.weight")
    index_path.write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=r"missing tensor\(s\) \['model.norm.weight'\]"):
        Step1ForCausalLM.from_pretrained(folder)


def test_wrong_shape_fails_naming_file_and_tensor(tiny_chat_lm: Path, tmp_path: Path) -> None:
    folder = copy_folder(tiny_chat_lm, tmp_path / "broken")
    config = json.loads((folder / "config.json").read_text())
    config["intermediate_size"] += 8
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        CheckpointError, match=r"model-0000\d-of-00002.safetensors: tensor model.layers.0.mlp"
    ):
        Step1ForCausalLM.from_pretrained(folder)


def test_missing_shard_and_bad_config_fail_loudly(tiny_chat_lm: Path, tmp_path: Path) -> None:
    folder = copy_folder(tiny_chat_lm, tmp_path / "broken")
    (folder / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model-00002-of-00002.safetensors, which is missing"):
        Step1ForCausalLM.from_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    config["num_attention_groups"] = 4  # 6 heads are not divisible into 4 groups
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        CheckpointError, match="config.json: num_attention_heads 6 is not divisible"
    ):
        Step1ForCausalLM.from_pretrained(folder)
    config["model_type"], config["architectures"] = "llama", ["LlamaForCausalLM"]
    config.pop("num_attention_groups")
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="expected model_type 'step1'"):
        Step1ForCausalLM.from_pretrained(folder)


def test_repetition_aware_rule() -> None:
    assert repetition_banned_token([7] * 9) is None  # fewer than 10 ids: no rule
    assert repetition_banned_token([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]) is None
    assert repetition_banned_token([5, 1, 2, 3, 4, 6, 7, 8, 9, 5]) == 5
    # the window spans the prompt boundary: only the last 10 ids of the whole sequence count
    assert repetition_banned_token([5] + list(range(10, 19)) + [5]) is None
    logits = torch.zeros(20)
    logits[5] = 10.0
    greedy = SamplingParams(temperature=0.0, repetition_aware=True)
    history = [5, 1, 2, 3, 4, 6, 7, 8, 9, 5]
    assert select_token(logits, greedy, torch.Generator(), history) != 5
    assert (
        select_token(
            logits, dataclasses.replace(greedy, repetition_aware=False), torch.Generator(), history
        )
        == 5
    )


def test_top_k_and_top_p_filtering() -> None:
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    kept = filter_logits(logits, SamplingParams(temperature=1.0, top_k=2)).isfinite()
    assert kept.tolist() == [True, True, False, False]
    kept = filter_logits(logits, SamplingParams(temperature=1.0, top_p=0.75)).isfinite()
    assert kept.tolist() == [True, True, False, False]
    kept = filter_logits(logits, SamplingParams(temperature=1.0, top_p=0.85)).isfinite()
    assert kept.tolist() == [True, True, True, False]


def test_sampling_params_are_validated() -> None:
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0.0)
    with pytest.raises(ValueError, match="temperature"):
        SamplingParams(temperature=-1.0)


def test_generation_is_reproducible_with_a_seed(tiny_tts_lm: Path) -> None:
    model = Step1ForCausalLM.from_pretrained(tiny_tts_lm)
    prompt = [1, 4, 10, 11, 12, 3, 4, 13]
    params = dataclasses.replace(TTS_DEFAULTS, seed=1234, max_tokens=40)
    first, second = list(generate(model, prompt, params)), list(generate(model, prompt, params))
    assert first == second and len(first) > 0
    assert first != list(generate(model, prompt, dataclasses.replace(params, seed=99)))


def test_aqaa_style_configs_are_read_from_their_own_fields() -> None:
    base = small_config().to_hf_dict()
    aqaa = {
        "architectures": ["StepOmniForCausalLM"],
        "model_type": "step_omni",
        "text_config": {
            k: v for k, v in base.items() if k not in ("architectures", "model_type", "auto_map")
        },
    }
    aqaa["text_config"]["num_key_value_heads"] = aqaa["text_config"].pop("num_attention_groups")
    aqaa["text_config"]["num_attention_groups"] = 2  # Step configs carry both spellings
    config = Step1Config.from_dict(aqaa, source="aqaa/config.json")
    assert config.num_attention_groups == 2 and config.vocab_size == 300
    with pytest.raises(CheckpointError, match="rotary positions"):
        Step1Config.from_dict({**base, "rope_theta": 1e6})
    with pytest.raises(CheckpointError, match="Step1-compatible"):
        Step1Config.from_dict({"model_type": "llama", "hidden_size": 8})

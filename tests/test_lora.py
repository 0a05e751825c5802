"""LoRA: a fresh adapter changes nothing, merge is exact, only the adapter trains, adapter files round-trip
and refuse a foreign base, the KV cache and generate() still agree, rsLoRA's scale, MLP targets."""

import json
import re

import pytest
import torch
import torch.nn as nn
from safetensors.torch import save_file

from conftest import FP32
from nanolevels.checkpoint import load_model, read_safetensors, save_model
from nanolevels.lora import (DEFAULT_TARGETS, LoRALinear, add_lora, base_fingerprint, load_adapter,
                             lora_layers, lora_param_count, lora_state_dict, merge_lora,
                             remove_lora, save_adapter, save_peft_adapter, set_lora_enabled,
                             unmerge_lora)
from nanolevels.model import GPT, GPTConfig
from nanolevels.tokenizer import Tokenizer

VOCAB, BLOCK, C, LAYERS = 270, 16, 32, 2  # 270: 256 bytes, 13 merges, end-of-text


def tiny_gpt(seed=0):
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=VOCAB, block_size=BLOCK, n_layer=LAYERS, n_head=2, n_embd=C)).eval()


def batch(seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (4, BLOCK), generator=g)


def logits(model, x):
    with torch.no_grad():
        return model(x, x)[0]  # with targets: logits at every position, (B, T, V)


def train_steps(model, steps=8, lr=0.02):
    """A few AdamW steps on random tokens, with only the LoRA tensors in the optimizer."""
    params = [p for name, p in model.named_parameters() if "lora_" in name]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    model.train()
    for step in range(steps):
        x = batch(100 + step)
        _, loss = model(x, x.roll(-1, dims=1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def add_lora_to(model, **kw):
    add_lora(model, **kw)
    return model


@pytest.fixture(scope="module")
def trained():
    """(base, adapted): the same seeded GPT, once plain and once with an adapter trained a few steps."""
    adapted = tiny_gpt()
    add_lora(adapted, r=4, alpha=8.0)
    return tiny_gpt(), train_steps(adapted)


def test_fresh_adapter_changes_nothing():
    base, model = tiny_gpt(), tiny_gpt()
    names = add_lora(model)
    assert names == [f"transformer.h.{i}.{t}" for i in range(LAYERS) for t in DEFAULT_TARGETS]
    x = batch()
    assert torch.equal(logits(model, x), logits(base, x))


def test_only_adapter_trains_and_count(trained):
    _, model = trained
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(name.endswith((".lora_A", ".lora_B")) for name in trainable)
    r = 4
    per_layer = r * (C + 3 * C) + r * (C + C)  # c_attn: C -> 3C, c_proj: C -> C; r * (in + out) each
    assert lora_param_count(model) == LAYERS * per_layer == sum(p.numel() for p in model.parameters()
                                                                  if p.requires_grad)
    for layer in lora_layers(model).values():
        assert layer.lora_A.shape == (r, layer.base.in_features) and layer.lora_B.shape == (layer.base.out_features, r)


def test_merge_unmerge_disable(trained):
    base, model = trained
    x = batch()
    unmerged, base_logits = logits(model, x), logits(base, x)
    assert (unmerged - base_logits).abs().max() > 1e-3  # training moved the model
    weights = {name: p.clone() for name, p in model.named_parameters() if "base.weight" in name}
    merge_lora(model)
    merge_lora(model)  # idempotent
    assert all(layer.merged for layer in lora_layers(model).values())
    torch.testing.assert_close(logits(model, x), unmerged, **FP32)
    unmerge_lora(model)
    for name, p in model.named_parameters():
        if name in weights:
            torch.testing.assert_close(p, weights[name], atol=1e-6, rtol=0)
    assert torch.equal(logits(model, x), unmerged)
    set_lora_enabled(model, False)
    assert torch.equal(logits(model, x), base_logits)
    set_lora_enabled(model, True)
    merge_lora(model)
    with pytest.raises(ValueError, match="unmerge_lora"):
        set_lora_enabled(model, False)
    unmerge_lora(model)


def test_remove_lora():
    model = train_steps(add_lora_to(tiny_gpt()))
    x = batch()
    adapted = logits(model, x)
    merge_lora(model)
    remove_lora(model)
    assert not lora_layers(model) and type(model.transformer.h[0].attn.c_attn) is nn.Linear
    assert all(p.requires_grad for p in model.parameters())
    torch.testing.assert_close(logits(model, x), adapted, **FP32)
    model = add_lora_to(tiny_gpt())
    remove_lora(model)  # unmerged: the base comes back untouched
    assert torch.equal(logits(model, x), logits(tiny_gpt(), x))


def test_fingerprint_ignores_adapter_and_merge(trained):
    base, model = trained
    fp = base_fingerprint(base)
    assert len(fp) == 16 and base_fingerprint(model) == fp
    merge_lora(model)
    assert base_fingerprint(model) == fp
    unmerge_lora(model)
    assert base_fingerprint(tiny_gpt(seed=1)) != fp


def test_save_load_adapter(tmp_path, trained):
    _, model = trained
    tok = Tokenizer.train("hello world, hello tiny world of tiny models\n" * 10, VOCAB)
    assert tok.vocab_size == VOCAB  # the checkpoint's tokenizer fits the model
    base_path, adapter_path = str(tmp_path / "base.safetensors"), str(tmp_path / "a.safetensors")
    save_model(base_path, tiny_gpt(), tok)
    save_adapter(adapter_path, model, step=8, note="test")
    fresh = load_model(base_path)[0].eval()
    meta = load_adapter(adapter_path, fresh)  # a model without adapters: load_adapter adds them
    assert meta["r"] == 4 and meta["alpha"] == 8.0 and meta["step"] == 8 and meta["note"] == "test"
    assert meta["targets"] == list(lora_layers(model)) == list(lora_layers(fresh))
    x = batch()
    assert torch.equal(logits(fresh, x), logits(model, x))
    assert all(torch.equal(t, lora_state_dict(model)[k]) for k, t in lora_state_dict(fresh).items())
    load_adapter(adapter_path, fresh)  # into existing adapters: replaces their tensors
    assert (tmp_path / "a.safetensors").stat().st_size * 10 < (tmp_path / "base.safetensors").stat().st_size
    with pytest.raises(ValueError, match="fingerprint"):
        load_adapter(adapter_path, tiny_gpt(seed=1))
    with pytest.raises(ValueError, match="reserved"):
        save_adapter(adapter_path, model, r=2)


def test_bad_adapter_files(tmp_path, trained):
    _, model = trained
    with pytest.raises(FileNotFoundError):
        load_adapter(str(tmp_path / "none.safetensors"), tiny_gpt())
    path = tmp_path / "a.safetensors"
    save_adapter(str(path), model)
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        load_adapter(str(path), tiny_gpt())
    with pytest.raises(ValueError, match="no LoRA adapters"):
        save_adapter(str(path), tiny_gpt())


def test_bad_targets():
    with pytest.raises(ValueError, match="no module matches target 'attn.q_proj'.*transformer.h.0.attn.c_attn"):
        add_lora(tiny_gpt(), targets=("attn.q_proj",))
    model = tiny_gpt()
    add_lora(model)
    with pytest.raises(ValueError, match="already has LoRA"):
        add_lora(model)
    with pytest.raises(ValueError, match="rank"):
        LoRALinear(nn.Linear(4, 4), r=0, alpha=1.0)


def test_generate_with_cache_and_merged(trained):
    _, model = trained
    prompt = batch()[:1, :5]
    n = 2 * BLOCK  # past block_size, so the window jumps and the cache refills
    cached = model.generate(prompt, n, temperature=0, use_cache=True)
    assert torch.equal(cached, model.generate(prompt, n, temperature=0, use_cache=False))
    merge_lora(model)
    assert torch.equal(model.generate(prompt, n, temperature=0), cached)
    unmerge_lora(model)


def test_scales():
    assert LoRALinear(nn.Linear(8, 8), r=4, alpha=8.0).scale == 8.0 / 4
    assert LoRALinear(nn.Linear(8, 8), r=4, alpha=8.0, rslora=True).scale == 8.0 / 4 ** 0.5
    layer = LoRALinear(nn.Linear(8, 6), r=2, alpha=1.0)
    assert not layer.base.weight.requires_grad and layer.lora_A.requires_grad and not layer.lora_B.any()


def test_mlp_targets():
    base, model = tiny_gpt(), tiny_gpt()
    names = add_lora(model, targets=("mlp.c_fc", "mlp.c_proj"), r=2, rslora=True)
    assert names == [f"transformer.h.{i}.mlp.{m}" for i in range(LAYERS) for m in ("c_fc", "c_proj")]
    assert lora_param_count(model) == LAYERS * 2 * ((C + 4 * C) + (4 * C + C))
    train_steps(model)
    x = batch()
    unmerged = logits(model, x)
    assert (unmerged - logits(base, x)).abs().max() > 1e-3
    merge_lora(model)
    torch.testing.assert_close(logits(model, x), unmerged, **FP32)


@pytest.mark.parametrize("key, value, message", [
    ("base_fingerprint", None, "no 'base_fingerprint' in its metadata"),
    ("targets", None, "no 'targets' in its metadata"),
    ("r", "{oops", "the 'r' in its metadata is not JSON"),
    ("r", '"4"', "the adapter's r is '4'"),
])
def test_malformed_adapter_files_name_the_file(tmp_path, trained, key, value, message):
    _, model = trained
    path = tmp_path / "a.safetensors"
    save_adapter(str(path), model)
    tensors, metadata = read_safetensors(str(path))
    metadata = {k: v for k, v in (metadata | {key: value}).items() if v is not None}
    save_file(tensors, str(path), metadata=metadata)
    with pytest.raises(ValueError, match=re.escape(message)) as e:
        load_adapter(str(path), tiny_gpt())
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_save_peft_adapter(tmp_path, trained):
    _, model = trained
    paths = save_peft_adapter(str(tmp_path / "adapter"), model)
    config = json.loads(open(paths[0]).read())
    assert (config["peft_type"], config["r"], config["lora_alpha"], config["fan_in_fan_out"]) == (
        "LORA", 4, 8.0, True)
    assert config["target_modules"] == list(lora_layers(model))
    tensors, _ = read_safetensors(paths[1])
    name = "base_model.model.transformer.h.0.attn.c_attn"
    assert torch.equal(tensors[f"{name}.lora_A.weight"],
                       lora_state_dict(model)["transformer.h.0.attn.c_attn.lora_A"])
    assert tensors[f"{name}.lora_B.weight"].shape == (3 * C, 4)  # (out, r), as peft's nn.Linear
    merge_lora(model)
    with pytest.raises(ValueError, match="unmerge_lora"):
        save_peft_adapter(str(tmp_path / "adapter"), model)
    unmerge_lora(model)
    with pytest.raises(ValueError, match="no LoRA adapters"):
        save_peft_adapter(str(tmp_path / "adapter"), tiny_gpt())

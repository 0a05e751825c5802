"""Tests for nanolevels/model.py: shapes, loss masking, init, KV cache, generation, GPT-2 import."""

import math
import os
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch
from torch.nn import functional as F
from safetensors.torch import save_file

from conftest import FP32
from nanolevels.model import GPT, GPTConfig, download_gpt2, sample

BLOCK = 16


def tiny_gpt(seed=0, sharp=True, **overrides):
    """A seeded tiny GPT in eval mode. sharp: weight matrices ~ N(0, 0.5), so that greedy output varies
    from token to token instead of repeating one token, as a freshly initialised model's does."""
    torch.manual_seed(seed)
    config = dict(vocab_size=64, block_size=BLOCK, n_layer=2, n_head=2, n_embd=32)
    model = GPT(GPTConfig(**(config | overrides))).eval()
    if sharp:
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() == 2:
                    p.normal_(0.0, 0.5)
    return model


def reference_greedy(model, idx, max_new_tokens):
    """Greedy decoding the slow, obvious way: a full forward over the last block_size tokens every step."""
    for _ in range(max_new_tokens):
        window = idx[:, -model.config.block_size:]
        logits, _ = model(window, targets=window)  # targets: logits for every position
        idx = torch.cat((idx, logits[:, -1].argmax(-1, keepdim=True)), dim=1)
    return idx


PROMPT = torch.tensor([[1, 2, 3]])


# ---- forward, loss, parameters ----

def test_forward_shapes():
    model = tiny_gpt()
    idx = torch.randint(0, 64, (2, 10))
    logits, loss = model(idx, targets=idx)
    assert logits.shape == (2, 10, 64) and loss.dim() == 0
    logits, loss = model(idx)
    assert logits.shape == (2, 1, 64) and loss is None


def test_loss_ignores_masked_targets():
    model = tiny_gpt()
    idx = torch.randint(0, 64, (2, 8))
    targets = torch.randint(0, 64, (2, 8))
    targets[0, :5] = -100
    targets[1, 2] = -100
    logits, loss = model(idx, targets=targets)
    logp = F.log_softmax(logits, dim=-1)
    kept = [-logp[b, t, targets[b, t]] for b in range(2) for t in range(8) if targets[b, t] != -100]
    assert len(kept) == 10
    torch.testing.assert_close(loss, torch.stack(kept).mean())


def test_tied_weights_and_num_params():
    model = tiny_gpt(sharp=False)
    assert model.lm_head.weight is model.transformer.wte.weight
    V, T, C, L = 64, BLOCK, 32, 2
    per_block = 2 * 2 * C + (C * 3 * C + 3 * C) + (C * C + C) + (C * 4 * C + 4 * C) + (4 * C * C + C)
    total = V * C + T * C + L * per_block + 2 * C
    assert model.num_params() == total
    assert model.num_params(non_embedding=True) == total - T * C
    assert model.estimate_flops_per_token() == 6 * (total - T * C) + 12 * L * C * T


def test_init_residual_projections_are_smaller():
    model = tiny_gpt(sharp=False, n_embd=64, n_layer=4)
    block = model.transformer.h[0]
    assert abs(block.mlp.c_fc.weight.std().item() - 0.02) < 0.002
    assert abs(block.mlp.c_proj.weight.std().item() - 0.02 / math.sqrt(8)) < 0.0007
    assert abs(block.attn.c_proj.weight.std().item() - 0.02 / math.sqrt(8)) < 0.0007
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.bias is not None]
    assert len(linears) == 4 * 4 and all((m.bias == 0).all() for m in linears)


def test_gelu_is_exact_unless_gpt2s_is_asked_for():
    """The MLP's GELU: the exact (erf) one by default, GPT-2's tanh approximation with "tanh"."""
    x = torch.linspace(-4, 4, 101)
    exact = 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))
    gpt2 = 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
    assert GPTConfig(vocab_size=8).gelu == "none"
    for gelu, expected in (("none", exact), ("tanh", gpt2)):
        mlp = GPT(GPTConfig(vocab_size=8, n_layer=1, gelu=gelu)).transformer.h[0].mlp
        torch.testing.assert_close(mlp.gelu(x), expected, **FP32)
    with pytest.raises(ValueError, match="gelu must be 'none' .* got 'relu'"):
        GPTConfig(vocab_size=8, gelu="relu")


def test_too_long_raises():
    model = tiny_gpt()
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros(1, BLOCK + 1, dtype=torch.long))
    cache = model.new_cache(1)
    model(torch.zeros(1, BLOCK - 2, dtype=torch.long), cache=cache)
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros(1, 3, dtype=torch.long), cache=cache)


# ---- KV cache ----

def test_cache_token_by_token_matches_full_forward():
    model = tiny_gpt()
    idx = torch.randint(0, 64, (2, 12))
    full, _ = model(idx, targets=idx)
    cache = model.new_cache(2)
    chunks = [model(idx[:, :5], cache=cache)[0]]
    chunks += [model(idx[:, t:t + 1], cache=cache)[0] for t in range(5, 12)]
    assert cache.pos == 12
    torch.testing.assert_close(torch.cat(chunks, dim=1), full, **FP32)


def test_cache_multi_token_prefill_at_nonzero_pos_matches_full_forward():
    model = tiny_gpt()
    idx = torch.randint(0, 64, (2, BLOCK))
    full, _ = model(idx, targets=idx)
    cache = model.new_cache(2)
    chunks = [model(idx[:, a:b], cache=cache)[0] for a, b in [(0, 4), (4, 9), (9, 10), (10, BLOCK)]]
    torch.testing.assert_close(torch.cat(chunks, dim=1), full, **FP32)


def test_new_cache_follows_model_dtype():
    model = tiny_gpt().double()
    cache = model.new_cache(1)
    assert cache.k[0].dtype == torch.float64 and cache.k[0].shape == (1, 2, BLOCK, 16)
    idx = torch.randint(0, 64, (1, 6))
    logits, _ = model(idx, cache=cache)
    torch.testing.assert_close(logits, model(idx, targets=idx)[0])


# ---- generation ----

def test_long_prompt_sees_only_its_last_block():
    model = tiny_gpt(sharp=True)
    long = torch.randint(0, 64, (1, BLOCK + 5))
    out = model.generate(long, 6, temperature=0)
    assert torch.equal(out[:, -6:], model.generate(long[:, -BLOCK:], 6, temperature=0)[:, -6:])


@pytest.mark.parametrize("prompt_len, max_new_tokens", [(3, 10), (3, 2 * BLOCK + 9), (BLOCK + 5, 20)])
def test_greedy_with_cache_equals_without_and_reference(prompt_len, max_new_tokens):
    model = tiny_gpt()
    prompt = torch.randint(0, 64, (1, prompt_len))
    with_cache = model.generate(prompt, max_new_tokens, temperature=0)
    without = model.generate(prompt, max_new_tokens, temperature=0, use_cache=False)
    assert with_cache.shape == (1, prompt_len + max_new_tokens)
    assert with_cache.tolist() == without.tolist() == reference_greedy(model, prompt, max_new_tokens).tolist()


def test_greedy_batch_with_cache_equals_without():
    model = tiny_gpt()
    prompt = torch.randint(0, 64, (3, 4))
    with_cache = model.generate(prompt, 2 * BLOCK + 3, temperature=0)
    assert with_cache.tolist() == model.generate(prompt, 2 * BLOCK + 3, temperature=0, use_cache=False).tolist()


def test_pinned_greedy_tokens():
    # a change here means the model computes something else: if intended, re-pin the list
    out = tiny_gpt(seed=0).generate(PROMPT, 40, temperature=0)
    assert out[0].tolist() == [1, 2, 3, 45, 43, 59, 45, 53, 33, 43, 24, 33, 43, 44, 33, 58, 45, 43, 18, 33, 18, 55,
                               29, 24, 33, 33, 10, 55, 43, 33, 10, 33, 55, 1, 44, 45, 18, 15, 43, 33, 24, 24, 50]


def test_sampling_limits_equal_greedy():
    model = tiny_gpt()
    greedy = model.generate(PROMPT, 25, temperature=0)
    for kwargs in [dict(top_k=1), dict(top_p=1e-9), dict(top_k=1, top_p=0.5)]:
        out = model.generate(PROMPT, 25, temperature=1.0, generator=torch.Generator().manual_seed(1), **kwargs)
        assert out.tolist() == greedy.tolist(), kwargs
    assert greedy.tolist() == reference_greedy(model, PROMPT, 25).tolist()


def test_sample_top_p_and_top_k_keep_the_right_tokens():
    logits = torch.tensor([0.5, 0.3, 0.2]).log().expand(2000, 3)
    g = torch.Generator().manual_seed(0)
    assert set(sample(logits, top_p=0.6, generator=g).unique().tolist()) == {0, 1}
    assert set(sample(logits, top_p=0.45, generator=g).unique().tolist()) == {0}
    assert set(sample(logits, top_k=2, generator=g).unique().tolist()) == {0, 1}
    assert set(sample(logits, top_p=1.0, generator=g).unique().tolist()) == {0, 1, 2}


@pytest.mark.parametrize("top_p", [0.0, 1.5, -0.1])
def test_bad_top_p_raises(top_p):
    with pytest.raises(ValueError, match="top_p"):
        tiny_gpt().generate(PROMPT, 5, top_p=top_p)


def test_stop_tokens_stop_after_the_stop_token():
    model = tiny_gpt()
    new = model.generate(PROMPT, 30, temperature=0)[0, 3:].tolist()
    k = next(i for i in range(3, 30) if new[i] not in new[:i])  # a token's first appearance, not at the start
    out = model.generate(PROMPT, 30, temperature=0, stop_tokens=(new[k], 999))
    assert out[0, 3:].tolist() == new[:k + 1]  # the stop token is included
    assert list(model.generate_stream(PROMPT, 30, temperature=0, stop_tokens={new[k]})) == new[:k + 1]
    batch = model.generate(PROMPT.repeat(2, 1), 30, temperature=0, stop_tokens=(new[k],))
    assert batch.shape == (2, 33)  # a batch does not stop early


def test_generate_stream_yields_what_generate_returns():
    model = tiny_gpt()
    kwargs = dict(temperature=0.8, top_k=20, top_p=0.9)
    out = model.generate(PROMPT, 2 * BLOCK, generator=torch.Generator().manual_seed(3), **kwargs)
    stream = model.generate_stream(PROMPT, 2 * BLOCK, generator=torch.Generator().manual_seed(3), **kwargs)
    tokens = list(stream)
    assert all(isinstance(t, int) for t in tokens)
    assert tokens == out[0, 3:].tolist()
    with pytest.raises(ValueError, match="batch size 1"):
        next(model.generate_stream(PROMPT.repeat(2, 1), 5))


# ---- GPT-2 weight import ----

def hf_gpt2_tensors(prefix="", n_layer=2, n_embd=128, vocab_size=50, block_size=16):
    """Random weights laid out like Hugging Face's GPT-2 model.safetensors: Conv1D weights are (in, out)."""
    g = torch.Generator().manual_seed(0)
    C = n_embd

    def rand(*shape):
        return 0.3 * torch.randn(*shape, generator=g)

    t = {"wte.weight": rand(vocab_size, C), "wpe.weight": rand(block_size, C),
         "ln_f.weight": 1 + rand(C), "ln_f.bias": rand(C)}
    for i in range(n_layer):
        h = f"h.{i}."
        t |= {h + "ln_1.weight": 1 + rand(C), h + "ln_1.bias": rand(C),
              h + "attn.c_attn.weight": rand(C, 3 * C), h + "attn.c_attn.bias": rand(3 * C),
              h + "attn.c_proj.weight": rand(C, C), h + "attn.c_proj.bias": rand(C),
              h + "ln_2.weight": 1 + rand(C), h + "ln_2.bias": rand(C),
              h + "mlp.c_fc.weight": rand(C, 4 * C), h + "mlp.c_fc.bias": rand(4 * C),
              h + "mlp.c_proj.weight": rand(4 * C, C), h + "mlp.c_proj.bias": rand(C),
              h + "attn.bias": torch.ones(block_size, block_size).tril().view(1, 1, block_size, block_size)}
        if prefix:
            t[h + "attn.masked_bias"] = torch.tensor(-1e4)
    return {prefix + name: tensor for name, tensor in t.items()}


def numpy_gpt2_logits(t, idx, n_head):
    """GPT-2's forward pass written independently, in float64 numpy, straight from the HF tensors."""
    w = {name: tensor.double().numpy() for name, tensor in t.items()}

    def layer_norm(x, name):
        x = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5)
        return x * w[name + ".weight"] + w[name + ".bias"]

    def conv1d(x, name):
        return x @ w[name + ".weight"] + w[name + ".bias"]

    def gelu(x):
        return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))

    T, C = len(idx), w["wte.weight"].shape[1]
    hs = C // n_head
    x = w["wte.weight"][idx] + w["wpe.weight"][:T]
    future = np.triu(np.ones((T, T), dtype=bool), k=1)
    for i in range(len([n for n in w if n.endswith("ln_1.weight")])):
        q, k, v = np.split(conv1d(layer_norm(x, f"h.{i}.ln_1"), f"h.{i}.attn.c_attn"), 3, axis=-1)
        heads = []
        for s in range(0, C, hs):
            att = np.where(future, -np.inf, q[:, s:s + hs] @ k[:, s:s + hs].T / math.sqrt(hs))
            att = np.exp(att - att.max(-1, keepdims=True))
            heads.append(att / att.sum(-1, keepdims=True) @ v[:, s:s + hs])
        x = x + conv1d(np.concatenate(heads, axis=-1), f"h.{i}.attn.c_proj")
        x = x + conv1d(gelu(conv1d(layer_norm(x, f"h.{i}.ln_2"), f"h.{i}.mlp.c_fc")), f"h.{i}.mlp.c_proj")
    return layer_norm(x, "ln_f") @ w["wte.weight"].T


@pytest.mark.parametrize("prefix", ["", "transformer."])
def test_from_hf_gpt2_places_every_tensor(tmp_path, prefix):
    tensors = hf_gpt2_tensors(prefix)
    path = tmp_path / "model.safetensors"
    save_file(tensors, str(path))
    model = GPT.from_hf_gpt2(str(path))
    cfg = model.config
    assert (cfg.vocab_size, cfg.block_size, cfg.n_layer, cfg.n_head, cfg.n_embd) == (50, 16, 2, 2, 128)
    params = model.state_dict()
    for name, tensor in tensors.items():
        name = name.removeprefix("transformer.")
        if name.endswith((".attn.bias", ".attn.masked_bias")):
            continue  # the causal-mask buffers
        conv1d = name.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight"))
        torch.testing.assert_close(params["transformer." + name], tensor.t() if conv1d else tensor, rtol=0, atol=0)
    assert torch.equal(model.lm_head.weight, tensors[prefix + "wte.weight"])
    # and the model computes what GPT-2 computes
    idx = torch.tensor([[5, 1, 42, 7, 7, 30, 2, 11]])
    logits, _ = model(idx, targets=idx)
    expected = numpy_gpt2_logits({n.removeprefix(prefix): t for n, t in tensors.items()}, idx[0].numpy(), n_head=2)
    np.testing.assert_allclose(logits[0].detach().double().numpy(), expected, rtol=1e-4, atol=1e-4)


def test_from_hf_gpt2_rejects_missing_and_unexpected_keys(tmp_path):
    tensors = hf_gpt2_tensors()
    del tensors["h.1.ln_2.bias"]
    save_file(tensors, str(tmp_path / "missing.safetensors"))
    with pytest.raises(ValueError, match="h.1.ln_2.bias"):
        GPT.from_hf_gpt2(str(tmp_path / "missing.safetensors"))
    tensors = hf_gpt2_tensors() | {"h.0.attn.rotary.weight": torch.zeros(3)}
    save_file(tensors, str(tmp_path / "extra.safetensors"))
    with pytest.raises(ValueError, match="h.0.attn.rotary.weight"):
        GPT.from_hf_gpt2(str(tmp_path / "extra.safetensors"))


def test_from_hf_gpt2_takes_n_head(tmp_path):
    save_file(hf_gpt2_tensors(n_embd=32), str(tmp_path / "model.safetensors"))
    model = GPT.from_hf_gpt2(str(tmp_path / "model.safetensors"), n_head=4)
    assert model.config.n_head == 4 and model.transformer.h[0].attn.n_head == 4


def test_download_gpt2_offline_is_a_connection_error_and_leaves_nothing(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")
    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(ConnectionError, match="no network"):
        download_gpt2(str(tmp_path / "gpt2"))
    assert os.listdir(tmp_path / "gpt2") == []
    save_file(hf_gpt2_tensors(), str(tmp_path / "gpt2" / "model.safetensors"))  # already there: no download
    assert download_gpt2(str(tmp_path / "gpt2")) == str(tmp_path / "gpt2" / "model.safetensors")


def test_to_hf_gpt2_is_the_inverse_of_from_hf_gpt2(tmp_path):
    tensors = hf_gpt2_tensors(prefix="transformer.")
    save_file(tensors, str(tmp_path / "model.safetensors"))
    exported = GPT.from_hf_gpt2(str(tmp_path / "model.safetensors")).to_hf_gpt2()
    weights = {n: t for n, t in tensors.items()
               if not n.endswith((".attn.bias", ".attn.masked_bias"))}
    assert exported.keys() == weights.keys()  # the save_pretrained names; lm_head is tied, left out
    assert all(torch.equal(exported[n], t) for n, t in weights.items())  # Conv1D (in, out) again


def test_from_hf_gpt2_reads_n_head_from_config_json(tmp_path):
    save_file(hf_gpt2_tensors(n_embd=32), str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text('{"model_type": "gpt2", "n_head": 8}')
    assert GPT.from_hf_gpt2(str(tmp_path / "model.safetensors")).config.n_head == 8
    (tmp_path / "config.json").write_text('{"n_head": "8"}')
    with pytest.raises(ValueError, match="n_head is '8'"):
        GPT.from_hf_gpt2(str(tmp_path / "model.safetensors"))


def test_from_hf_gpt2_names_a_missing_or_damaged_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no GPT-2 model.safetensors at .*none.safetensors"):
        GPT.from_hf_gpt2(str(tmp_path / "none.safetensors"))
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="bad.safetensors is not a readable GPT-2"):
        GPT.from_hf_gpt2(str(tmp_path / "bad.safetensors"))

"""Checkpoints: safetensors round trip (weights, config, tokenizer), clear errors for bad files,
compiled-model key prefixes, optimizer state."""

import json
import re

import pytest
import tiktoken
import torch
from safetensors.torch import save_file

from nanolevels import provenance
from nanolevels.checkpoint import (load_hf_gpt2, load_model, load_train_state, load_weights,
                                   read_metadata, read_safetensors, save_model, save_train_state)
from test_model import hf_gpt2_tensors
from nanolevels.model import GPT, GPTConfig
from nanolevels.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.train("hello world, hello tiny world of tiny models\n" * 10, 280)


def tiny(tok, **kw):
    torch.manual_seed(0)
    return GPT(GPTConfig(**(dict(vocab_size=tok.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16) | kw)))


def test_round_trip(tmp_path, tok):
    model = tiny(tok)
    path = str(tmp_path / "m.safetensors")
    save_model(path, model, tok, step=7)
    loaded, tok2, meta = load_model(path)
    assert meta == {"step": 7} and loaded.config == model.config
    assert tok2.encode("hello world") == tok.encode("hello world")
    x = torch.randint(0, tok.vocab_size, (2, 16))
    assert torch.equal(loaded(x, x)[0], model(x, x)[0])
    assert loaded.lm_head.weight is loaded.transformer.wte.weight  # still tied after loading
    assert read_metadata(path)["config"]["n_embd"] == 16


def test_bad_files(tmp_path, tok):
    with pytest.raises(FileNotFoundError):
        load_model(str(tmp_path / "none.safetensors"))
    path = tmp_path / "m.safetensors"
    save_model(str(path), tiny(tok), tok)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        load_model(str(path))
    path.write_bytes(b"garbage" * 10)
    with pytest.raises(ValueError, match="corrupt or truncated"):
        load_model(str(path))


def test_wrong_shape_and_compiled_prefix(tmp_path, tok):
    model = tiny(tok)
    other = tiny(tok, n_embd=32)
    with pytest.raises(ValueError, match="does not fit"):
        load_weights(other, model.state_dict(), "x")
    prefixed = {"_orig_mod." + k: v for k, v in model.state_dict().items()}
    fresh = tiny(tok)
    torch.nn.init.zeros_(fresh.transformer.wpe.weight)
    load_weights(fresh, prefixed, "x")
    assert torch.equal(fresh.transformer.wpe.weight, model.transformer.wpe.weight)


def test_train_state_round_trip(tmp_path, tok):
    model = tiny(tok)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95))
    x = torch.randint(0, tok.vocab_size, (2, 16))
    model(x, x)[1].backward()
    opt.step()
    path = str(tmp_path / "s.safetensors")
    save_train_state(path, model, opt, 5)
    other = tiny(tok, dropout=0.1)
    torch.nn.init.zeros_(other.transformer.wpe.weight)
    opt2 = torch.optim.AdamW(other.parameters(), lr=1.0)
    step, _ = load_train_state(path, other, opt2)
    assert step == 5 and opt2.param_groups[0]["lr"] == 1e-3
    for p, p2 in zip(model.parameters(), other.parameters()):  # the weights travel with the moments
        assert torch.equal(p, p2)
        assert torch.equal(opt.state[p]["exp_avg"], opt2.state[p2]["exp_avg"])
    with pytest.raises(ValueError, match="other trainable parameters"):
        load_train_state(path, model, torch.optim.AdamW(list(model.parameters())[:2]))
    with pytest.raises(ValueError, match="other trainable parameters"):
        load_train_state(path, tiny(tok, n_embd=32), torch.optim.AdamW(tiny(tok, n_embd=32).parameters()))


def test_fingerprint_is_of_the_content(tmp_path, tok):
    """The same model saved again (the metadata lands in another order each time) keeps its
    fingerprint; other weights or other metadata change it."""
    model = tiny(tok)
    paths = [str(tmp_path / f"m{i}.safetensors") for i in range(4)]
    for path in paths:
        save_model(path, model, tok, step=3)
    assert len({provenance.checkpoint(p) for p in paths}) == 1 and len(provenance.checkpoint(paths[0])) == 16
    save_model(paths[1], model, tok, step=4)
    with torch.no_grad():
        model.transformer.wpe.weight[0, 0] += 1e-3
    save_model(paths[2], model, tok, step=3)
    assert len({provenance.checkpoint(p) for p in paths[:3]}) == 3


# ---- malformed files: one line that names the file (issue 24) ----

def write_model_file(path, tok, **metadata):
    """A hand-made model file: a real checkpoint's tensors under the given metadata."""
    save_model(str(path), tiny(tok), tok)
    tensors, real = read_safetensors(str(path))
    fields = {k: v for k, v in (real | metadata).items() if v is not None}
    save_file(tensors, str(path), metadata=fields)


CONFIG = dict(vocab_size=None, block_size=16, n_layer=1, n_head=2, n_embd=16)


@pytest.mark.parametrize("metadata, message", [
    (dict(config=None), "no 'config' in its metadata"),
    (dict(tokenizer=None), "no 'tokenizer' in its metadata"),
    (dict(config="{not json"), "'config' in its metadata is not JSON"),
    (dict(config="[1, 2]"), "its config is a JSON list"),
    (dict(config=json.dumps(CONFIG | {"vocab_size": 280, "colour": "red"})),
     "unknown key 'colour'"),
    (dict(config=json.dumps(CONFIG | {"vocab_size": 280, "n_layer": "1"})), "n_layer is '1'"),
    (dict(config=json.dumps(CONFIG | {"vocab_size": 280, "n_layer": 0})), "at least 1"),
    (dict(config=json.dumps({k: v for k, v in CONFIG.items() if k != "vocab_size"})), "vocab_size"),
    (dict(tokenizer='{"kind": "bpe"}'), "tokenizer metadata is not valid"),
])
def test_malformed_model_files_name_the_file(tmp_path, tok, metadata, message):
    path = tmp_path / "m.safetensors"
    write_model_file(path, tok, **metadata)
    with pytest.raises(ValueError, match=re.escape(message)) as e:
        load_model(str(path))
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_malformed_metadata_elsewhere_names_the_file(tmp_path, tok):
    path = tmp_path / "m.safetensors"
    write_model_file(path, tok, step="{")
    with pytest.raises(ValueError, match=re.escape(f"{path}: the 'step' in its metadata")):
        read_metadata(str(path))
    model = tiny(tok)
    opt = torch.optim.AdamW(model.parameters())
    state = tmp_path / "s.safetensors"
    save_train_state(str(state), model, opt, 3)
    tensors, metadata = read_safetensors(str(state))
    save_file(tensors, str(state), metadata={k: v for k, v in metadata.items() if k != "meta"})
    with pytest.raises(ValueError, match=re.escape(f"{state} is not a complete training state")):
        load_train_state(str(state), model, opt)


def test_gelu_of_older_checkpoints_and_of_hf_configs(tmp_path, tok):
    """A config saved before GPTConfig.gelu came from GPT-2's tanh GELU; a Hugging Face folder's
    activation_function says which GELU (none: GPT-2's); one we cannot run is refused."""
    path = tmp_path / "m.safetensors"
    before = {k: v for k, v in vars(tiny(tok).config).items() if k != "gelu"}
    write_model_file(path, tok, config=json.dumps(before))
    assert load_model(str(path))[0].config.gelu == "tanh"
    hf = str(tmp_path / "model.safetensors")
    save_file(hf_gpt2_tensors(), hf)
    assert GPT.from_hf_gpt2(hf).config.gelu == "tanh"
    for activation, gelu in (("gelu", "none"), ("gelu_new", "tanh"), ("relu", None)):
        (tmp_path / "config.json").write_text(json.dumps({"activation_function": activation}))
        if gelu is None:
            with pytest.raises(ValueError, match="activation_function is 'relu'"):
                GPT.from_hf_gpt2(hf)
        else:
            assert GPT.from_hf_gpt2(hf).config.gelu == gelu


def test_hf_gpt2_files_are_checked_before_any_download(tmp_path, monkeypatch):
    def offline(name):
        raise AssertionError("went for GPT-2's tokenizer before checking the weights")
    monkeypatch.setattr(tiktoken, "get_encoding", offline)
    missing = str(tmp_path / "nonexistent.safetensors")
    message = f"no GPT-2 model.safetensors at {missing}"
    with pytest.raises(FileNotFoundError, match=re.escape(message)):
        load_hf_gpt2(missing)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file at all" * 10)
    with pytest.raises(ValueError, match=re.escape(f"{garbage} is not a readable GPT-2")):
        load_hf_gpt2(str(garbage))
    (tmp_path / "config.json").write_text("[1]")
    save_file(hf_gpt2_tensors(), str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match="config.json is not a config.json"):
        load_hf_gpt2(str(tmp_path))

"""Export to the Hugging Face GPT-2 layout: read back by from_hf_gpt2 with the same logits and
greedy tokens (merged adapters too, bias=False too), export.py end to end, and, where transformers
and peft are installed, the folder loaded by GPT2LMHeadModel, AutoTokenizer and PeftModel."""

import copy
import json
import os

import pytest
import torch

import export
from nanolevels import data
from nanolevels.checkpoint import load_hf_gpt2, load_model, save_hf_gpt2, save_model
from nanolevels.lora import (add_lora, lora_layers, merge_lora, remove_lora, save_adapter,
                             save_peft_adapter)
from nanolevels.model import GPT, GPTConfig
from nanolevels.prompting import prompt_ids
from nanolevels.tokenizer import GPT2_PATTERN, Tokenizer

TEXT = "hello world, hello tiny world of tiny models\n" * 10
ROUND_TRIP = 1e-5  # the bound for the export read back (fp32); in practice it is 0


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.train(TEXT, 300)


def sharp_gpt(tok, seed=0, **overrides):
    """A seeded tiny GPT whose greedy output varies (weights ~ N(0, 0.5)); 4 heads of 8, so that
    n_embd // 64 would be wrong and config.json must carry the head count."""
    torch.manual_seed(seed)
    config = dict(vocab_size=tok.vocab_size, block_size=32, n_layer=2, n_head=4, n_embd=32)
    model = GPT(GPTConfig(**(config | overrides))).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.5) if p.dim() == 2 else p.normal_(0.0, 0.1)
    return model


def logits_and_greedy(model, ids):
    with torch.no_grad():
        greedy = model.generate(ids, 16, temperature=0)
        return model(greedy, targets=greedy)[0], greedy


def assert_same_model(a, b, ids):
    la, ga = logits_and_greedy(a, ids)
    lb, gb = logits_and_greedy(b, ids)
    assert (la - lb).abs().max().item() <= ROUND_TRIP
    assert torch.equal(ga, gb)


def test_round_trip_through_from_hf_gpt2(tmp_path, tok):
    model = sharp_gpt(tok)
    written = save_hf_gpt2(str(tmp_path), model, tok)
    assert sorted(os.listdir(tmp_path)) == sorted(os.path.basename(p) for p in written)
    back = GPT.from_hf_gpt2(str(tmp_path / "model.safetensors")).eval()
    assert back.config == model.config  # the head count came from config.json
    assert_same_model(model, back, torch.tensor([prompt_ids(tok, "hello tiny")]))
    model2, tok2 = load_hf_gpt2(str(tmp_path))  # the folder: weights, then tokenizer.json
    assert tok2.merges == tok.merges and tok2.special_tokens == tok.special_tokens
    assert tok2.encode(TEXT) == tok.encode(TEXT)
    config = json.loads((tmp_path / "config.json").read_text())
    assert (config["n_head"], config["n_positions"], config["eos_token_id"]) == (4, 32, tok.eot_id)


def test_export_without_biases_writes_zeros(tmp_path, tok):
    model = sharp_gpt(tok, bias=False)
    save_hf_gpt2(str(tmp_path), model, tok)
    back = GPT.from_hf_gpt2(str(tmp_path / "model.safetensors")).eval()
    assert back.config.bias and not back.transformer.ln_f.bias.any()
    assert_same_model(model, back, torch.tensor([prompt_ids(tok, "tiny")]))


def test_merged_adapter_round_trip(tmp_path, tok):
    model = sharp_gpt(tok)
    add_lora(model, r=4, alpha=8.0)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B.normal_(0.0, 0.5)  # a trained adapter's B is not zero
    with pytest.raises(ValueError, match="merge_lora"):
        model.to_hf_gpt2()  # a LoRALinear has no place in GPT-2's layout
    merged = copy.deepcopy(model)
    merge_lora(merged)
    remove_lora(merged)
    save_hf_gpt2(str(tmp_path), merged, tok)
    back, _ = load_hf_gpt2(str(tmp_path / "model.safetensors"))
    assert_same_model(merged.eval(), back.eval(), torch.tensor([prompt_ids(tok, "world")]))


def test_export_script(tmp_path, tok, run_main):
    model = sharp_gpt(tok)
    checkpoint, adapter = str(tmp_path / "m.safetensors"), str(tmp_path / "a.safetensors")
    save_model(checkpoint, model, tok)
    add_lora(model, r=2, alpha=4.0)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B.normal_(0.0, 0.5)
    save_adapter(adapter, model)
    out = str(tmp_path / "hf")
    code, stdout, _ = run_main(export.main, "--checkpoint", checkpoint, "--adapter", adapter,
                               "--out", out, "--prompt", "hello")
    assert code == 0, stdout
    assert "max |logit diff| 0.00e+00" in stdout and "equal: True" in stdout
    back, _ = load_hf_gpt2(out)
    merge_lora(model)
    remove_lora(model)
    assert_same_model(model.eval(), back.eval(), torch.tensor([prompt_ids(tok, "hello")]))
    # --peft: the base model, and the adapter apart; again into the same folder: its own files
    code, stdout, _ = run_main(export.main, "--checkpoint", checkpoint, "--adapter", adapter,
                               "--peft", "--out", out)
    assert code == 0 and sorted(os.listdir(os.path.join(out, "adapter"))) == [
        "adapter_config.json", "adapter_model.safetensors"]
    assert_same_model(load_model(checkpoint)[0].eval(), load_hf_gpt2(out)[0].eval(),
                      torch.tensor([prompt_ids(tok, "hello")]))


def test_export_script_refuses(tmp_path, tok, run_main):
    checkpoint = str(tmp_path / "run" / "model.safetensors")
    save_model(checkpoint, sharp_gpt(tok), tok)
    code, _, err = run_main(export.main, "--checkpoint", checkpoint, "--out", str(tmp_path / "run"))
    assert code == 2 and "not an export" in err  # never over a run's model.safetensors
    code, _, err = run_main(export.main, "--checkpoint", checkpoint, "--peft")
    assert code == 2 and "--adapter" in err


# ---- with transformers and peft (skipped where they are not installed) ----

@pytest.fixture(scope="module")
def world_run(tmp_path_factory, tok):
    """A tiny prepared world (its documents and tokenizer) and a model on that tokenizer."""
    world = str(tmp_path_factory.mktemp("export_world") / "world")
    data.prepare_world(world, people=12, bios_per_person=2, epochs=1, vocab_size=400, seed=5,
                       log=lambda *a: None)
    tokenizer = data.load_pretraining_data(world)[0]
    return world, tokenizer, sharp_gpt(tokenizer, seed=1, block_size=64)


def test_transformers_loads_the_export(tmp_path, world_run):
    transformers = pytest.importorskip("transformers")
    world, tokenizer, model = world_run
    save_hf_gpt2(str(tmp_path), model, tokenizer)
    hf = transformers.GPT2LMHeadModel.from_pretrained(str(tmp_path)).eval()
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    docs = [doc["text"] for doc in data.load_documents(world)]
    assert [hf_tokenizer(d)["input_ids"] for d in docs] == [tokenizer.encode(d) for d in docs]
    # pasted paragraphs, which GPT-2's own split (ByteLevel's regex) cuts otherwise than ours
    pasted = "\n\n".join(docs[:5]) + " 日本 🍣 HE'LL 12345\r\n\t end  "
    assert Tokenizer(tokenizer.merges, tokenizer.special_tokens,
                     GPT2_PATTERN).encode(pasted) != tokenizer.encode(pasted)
    assert hf_tokenizer(pasted)["input_ids"] == tokenizer.encode(pasted)
    assert hf_tokenizer.decode(tokenizer.encode(pasted)) == pasted
    ids = torch.tensor([prompt_ids(tokenizer, docs[0][:40])])
    ours, greedy = logits_and_greedy(model, ids)
    with torch.no_grad():
        theirs = hf(greedy).logits
        # the mask said: without one, transformers masks every pad token, and <|endoftext|> (our
        # prompts' first token) is the pad token too
        hf_greedy = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=16,
                                do_sample=False, eos_token_id=None, pad_token_id=tokenizer.eot_id)
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=1e-4)  # conftest.FP32: other kernels
    assert torch.equal(hf_greedy, greedy)
    assert hf_tokenizer.decode(greedy[0, 1:]) == tokenizer.decode(greedy[0, 1:].tolist())


def test_peft_loads_the_adapter(tmp_path, world_run):
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    _, tokenizer, base = world_run
    model = copy.deepcopy(base)
    add_lora(model, targets=("attn.c_attn", "attn.c_proj", "mlp.c_fc"), r=4, alpha=8.0)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B.normal_(0.0, 0.5)
    save_hf_gpt2(str(tmp_path), base, tokenizer)
    save_peft_adapter(str(tmp_path / "adapter"), model)
    hf = transformers.GPT2LMHeadModel.from_pretrained(str(tmp_path))
    adapted = peft.PeftModel.from_pretrained(hf, str(tmp_path / "adapter")).eval()
    ids = torch.tensor([prompt_ids(tokenizer, "Q: What is the birth city of")])
    ours, greedy = logits_and_greedy(model.eval(), ids)
    with torch.no_grad():
        theirs = adapted(greedy).logits
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=1e-4)
    assert torch.equal(theirs.argmax(-1), ours.argmax(-1))

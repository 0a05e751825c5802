"""The one training loop: schedule, exact resume, gradient accumulation, NaN stop."""

import json
import os

import numpy as np
import pytest
import torch

from conftest import FP32
from nanolevels import data
from nanolevels import train as train_module
from nanolevels.checkpoint import load_model, save_model
from nanolevels.model import GPT, GPTConfig
from nanolevels.tokenizer import Tokenizer
from nanolevels.train import TrainConfig, lr_at, train

CPU = torch.device("cpu")


def test_lr_schedule():
    cfg = TrainConfig(max_steps=100, warmup_steps=10, lr=1.0, min_lr=0.1)
    assert lr_at(0, cfg) == pytest.approx(0.1)
    assert lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(10, cfg) == pytest.approx(1.0)
    assert lr_at(55, cfg) == pytest.approx(0.55)
    assert lr_at(100, cfg) == pytest.approx(0.1)
    assert all(lr_at(s, cfg) >= lr_at(s + 1, cfg) for s in range(10, 100))


@pytest.fixture(scope="module")
def setup():
    text = "".join(f"Person {i} was born in city {i % 7}. " for i in range(300))
    tok = Tokenizer.train(text, 300)
    tokens = data.encode_documents(tok, [text])
    return tok, tokens


def fresh_model(tok, dropout=0.1):
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=2, n_head=2, n_embd=16, dropout=dropout))


def run(tok, tokens, out, steps, model=None, resume=False, crash_at=None, log=lambda *a: None, **kw):
    cfg = TrainConfig(**(dict(max_steps=steps, batch_size=4, lr=1e-2, warmup_steps=2, eval_interval=3,
                              eval_batches=2, log_interval=2, ckpt_interval=3) | kw))
    model = model or fresh_model(tok)

    def get_batch(split, step, micro):
        if step == crash_at:
            raise RuntimeError("simulated crash")
        return data.get_lm_batch(tokens, cfg.batch_size, 16, cfg.seed + (split == "val"), step, micro)

    def save_weights(step):
        save_model(os.path.join(out, "model.safetensors"), model, tok, step=step)

    metrics = train(model, cfg, get_batch, str(out), CPU, torch.float32, save_weights, resume=resume, log=log)
    return model, metrics


def test_resume_is_exact(setup, tmp_path):
    tok, tokens = setup
    straight, m1 = run(tok, tokens, tmp_path / "a", 8)
    with pytest.raises(RuntimeError, match="simulated"):
        run(tok, tokens, tmp_path / "b", 8, crash_at=7)  # dies after the checkpoint at step 6
    model, _, meta = load_model(str(tmp_path / "b" / "model.safetensors"))
    assert meta["step"] == 6
    messages = []
    resumed, m2 = run(tok, tokens, tmp_path / "b", 8, model=model, resume=True, log=messages.append)
    assert "resuming from step 6" in messages[0]
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name
    assert m1["val_loss"] == pytest.approx(m2["val_loss"], abs=1e-6)
    assert (tmp_path / "b" / "log.jsonl").read_text().count('"loss"') >= 4


def test_cut_between_the_two_writes_resumes_exactly(setup, tmp_path, monkeypatch):
    """A kill after the weights file is written and before the training state: the state, which holds
    the trainable weights too, is one save behind, and resuming from it is exact."""
    tok, tokens = setup
    straight, _ = run(tok, tokens, tmp_path / "a", 8)
    original = train_module.save_train_state

    def dies_at_step_6(path, model, optimizer, step, **meta):
        if step == 6:
            raise RuntimeError("killed between the two writes")
        original(path, model, optimizer, step, **meta)

    monkeypatch.setattr(train_module, "save_train_state", dies_at_step_6)
    with pytest.raises(RuntimeError, match="between the two writes"):
        run(tok, tokens, tmp_path / "b", 8)
    monkeypatch.setattr(train_module, "save_train_state", original)
    model, _, meta = load_model(str(tmp_path / "b" / "model.safetensors"))
    assert meta["step"] == 6  # the weights file is ahead of the state (step 3)
    messages = []
    resumed, _ = run(tok, tokens, tmp_path / "b", 8, model=model, resume=True, log=messages.append)
    assert "resuming from step 3" in messages[0]
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name


def test_resume_errors(setup, tmp_path):
    tok, tokens = setup
    with pytest.raises(FileNotFoundError, match="nothing to resume.*--overwrite"):
        run(tok, tokens, tmp_path, 4, resume=True)
    run(tok, tokens, tmp_path, 7)
    with pytest.raises(ValueError, match="already at step 7, past --max-steps 5"):
        run(tok, tokens, tmp_path, 5, resume=True)


def test_grad_accumulation_is_scaled(setup, tmp_path, monkeypatch):
    """Accumulating the same micro-batch twice must give the same update as using it once.

    Plain SGD and no clipping: AdamW and a clipped norm would hide a gradient twice too large."""
    tok, tokens = setup
    monkeypatch.setattr(train_module, "make_optimizer", lambda model, cfg, device: torch.optim.SGD(
        [p for p in model.parameters() if p.requires_grad], lr=cfg.lr))
    one, _ = run(tok, tokens, tmp_path / "one", 1, fresh_model(tok, dropout=0.0), grad_accum=1, grad_clip=0, lr=1.0)
    original = data.get_lm_batch
    monkeypatch.setattr(data, "get_lm_batch", lambda t, b, block, seed, step, micro=0: original(t, b, block, seed, step))
    two, _ = run(tok, tokens, tmp_path / "two", 1, fresh_model(tok, dropout=0.0), grad_accum=2, grad_clip=0, lr=1.0)
    assert any(not torch.equal(a, b) for a, b in zip(one.parameters(), fresh_model(tok, dropout=0.0).parameters()))
    for a, b in zip(one.parameters(), two.parameters()):
        assert torch.allclose(a, b, atol=1e-6)


def test_optimizer_is_adamw(setup):
    """make_optimizer's AdamW (fused on the CPU where torch has the kernel) updates as torch's
    reference loop does, to float32 precision, over a few clipped steps."""
    tok, tokens = setup
    cfg = TrainConfig(weight_decay=0.1)
    models = [fresh_model(tok, dropout=0.0), fresh_model(tok, dropout=0.0)]
    ours = train_module.make_optimizer(models[0], cfg, CPU)
    assert ours.defaults["fused"] == (torch.__version__ >= "2.4")
    params = list(models[1].parameters())
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    reference = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95), foreach=False)
    for step in range(5):
        x, y = data.get_lm_batch(tokens, 4, 16, 0, step)
        for model, opt in zip(models, (ours, reference)):
            model(x, y)[1].backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
    for (name, a), b in zip(models[0].named_parameters(), models[1].parameters()):
        assert torch.allclose(a, b, **FP32), name


def test_nan_loss_stops_and_keeps_last_checkpoint(setup, tmp_path, monkeypatch):
    tok, tokens = setup
    model = fresh_model(tok)

    def poison(module, args, output):
        return output * float("nan") if poison.on else output

    poison.on = False
    model.transformer.ln_f.register_forward_hook(poison)
    original = data.get_lm_batch

    def batches(tokens_, b, block, seed, step, *a):
        poison.on = step == 4
        return original(tokens_, b, block, seed, step, *a)

    monkeypatch.setattr(data, "get_lm_batch", batches)
    with pytest.raises(ValueError, match="nan at step 4"):
        run(tok, tokens, tmp_path, 8, model=model)
    _, _, meta = load_model(str(tmp_path / "model.safetensors"))
    assert meta["step"] == 3
    assert np.isfinite(load_model(str(tmp_path / "model.safetensors"))[0].transformer.wte.weight.sum().item())


def test_dev_check_stops_training(setup, tmp_path):
    """on_eval returning a "stop" reason stops at that evaluation, before the step cap, and says why;
    what it measured goes into the log's evaluation row, with the time so far."""
    tok, tokens = setup
    cfg = TrainConfig(max_steps=20, batch_size=4, warmup_steps=2, eval_interval=3, eval_batches=1, log_interval=2,
                      ckpt_interval=100)
    model, lines = fresh_model(tok), []

    def get_batch(split, step, micro):
        return data.get_lm_batch(tokens, 4, 16, 0, step, micro)

    metrics = train(model, cfg, get_batch, str(tmp_path), CPU, torch.float32,
                    lambda step: save_model(str(tmp_path / "model.safetensors"), model, tok, step=step),
                    on_eval=lambda step: {"dev": step / 10, **({"stop": "dev check passed"} if step >= 6 else {})},
                    log=lines.append)
    assert metrics["steps"] == 6 and metrics["stopped"] == "dev check passed"
    assert "stopping at step 6 of at most 20: dev check passed" in lines
    evals = [row for row in map(json.loads, open(tmp_path / "log.jsonl")) if "val_loss" in row]
    assert [(row["step"], row["dev"]) for row in evals[:3]] == [(0, 0.0), (3, 0.3), (6, 0.6)]
    assert all(row["elapsed_s"] >= 0 and "stop" not in row for row in evals)
    assert load_model(str(tmp_path / "model.safetensors"))[2]["step"] == 6
    metrics = train(fresh_model(tok), cfg, get_batch, str(tmp_path / "cap"), CPU, torch.float32, lambda step: None,
                    on_eval=lambda step: None, log=lines.append)
    assert metrics["steps"] == 20 and metrics["stopped"] == "the step cap (--max-steps 20)"

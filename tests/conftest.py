"""Shared test setup: one torch thread (tiny models run faster without threading overhead, and the
suite does not fight itself for the machine's cores)."""

import os
import sys

import pytest
import torch

# Tolerance for comparing two fp32 computations of the same numbers by different routes (cached vs
# full forward, merged vs separate LoRA, a batch vs one row): CPU kernels may sum in another order,
# fp32 keeps ~7 digits, and a few layers of that leave differences of ~1e-5 on values of size ~1.
FP32 = dict(atol=1e-4, rtol=1e-4)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


@pytest.fixture(autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def run_main(capsys):
    """Run a script's main(argv) in this process the way its command line does (cli.run: exit code 2
    and one line for a user error): run_main(main, *argv) -> (exit code, stdout, stderr)."""
    from nanolevels import cli

    def run(main, *argv):
        try:
            code = cli.run(main, list(argv))
        except SystemExit as e:  # argparse's errors
            code = e.code
        out, err = capsys.readouterr()
        return code, out, err
    return run


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A tiny prepared world and a tiny model pretrained on it for a few steps, shared by the
    tests of the level scripts: {"world": folder, "checkpoint": model.safetensors path}."""
    from nanolevels import data
    from nanolevels.checkpoint import save_model
    from nanolevels.model import GPT, GPTConfig
    from nanolevels.train import TrainConfig, train

    root = tmp_path_factory.mktemp("tiny_run")
    world = str(root / "world")
    data.prepare_world(world, people=12, bios_per_person=2, epochs=3, vocab_size=300, seed=3, log=lambda *a: None)
    tokenizer, train_tokens, val_tokens = data.load_pretraining_data(world)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=64, n_layer=2, n_head=2, n_embd=32))
    cfg = TrainConfig(max_steps=30, batch_size=8, lr=1e-2, warmup_steps=5, eval_interval=1000, eval_batches=1,
                      log_interval=1000, ckpt_interval=1000)
    path = str(root / "pretrain" / "model.safetensors")

    def get_batch(split, step, micro):
        return data.get_lm_batch(train_tokens if split == "train" else val_tokens, 8, 64, 0, step, micro)

    train(model, cfg, get_batch, str(root / "pretrain"), torch.device("cpu"), torch.float32,
          lambda step: save_model(path, model, tokenizer, step=step), log=lambda *a: None)
    return {"world": world, "checkpoint": path}

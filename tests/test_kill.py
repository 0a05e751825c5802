"""kill -9 at seeded random instants of real training processes (pretraining and LoRA, a checkpoint
at every step): wherever a kill lands, even inside a save, the folder holds one whole checkpoint and
--resume continues from it.

Each training process is a fork of this one, running the script's main() exactly as its command
line does: torch is already imported, so a process starts in a fraction of a second instead of two,
and 20 kills per script fit in seconds. SIGKILL gives it no chance to clean up, as with kill -9.
"""

import json
import multiprocessing
import os
import random
import signal
import sys

import pytest
import torch

import train_lora
import train_pretrain
from nanolevels import cli, data
from nanolevels.checkpoint import read_metadata
from nanolevels.train import STATE_FILE

KILLS = 20
TINY = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "32", "--batch-size", "4",
        "--eval-interval", "1000000", "--eval-batches", "1", "--log-interval", "1", "--device", "cpu"]


def start(main, argv: list[str], log: str) -> multiprocessing.Process:
    """main(argv) in a forked process, as `python script.py argv` would run it, printing into log."""
    def child():
        sys.stdout = sys.stderr = open(log, "w", buffering=1)  # not fds 1, 2: pytest's capture has its own files
        os._exit(cli.run(main, argv))
    process = multiprocessing.get_context("fork").Process(target=child)
    process.start()
    return process


def checkpoint_step(out: str, weights: str) -> int | None:
    """The step --resume would continue from, after checking that the folder holds one whole checkpoint:
    a readable training state (the unit a resume reads) and weights of the same step or, if the kill fell
    between the two writes, of the next one."""
    if not os.path.exists(os.path.join(out, STATE_FILE)):
        return None
    step = read_metadata(os.path.join(out, STATE_FILE))["step"]
    assert read_metadata(os.path.join(out, weights))["step"] in (step, step + 1)
    return step


def kill_and_resume(main, args: list[str], out: str, weights: str, seed: int, tmp_path) -> dict:
    """Start the run, kill -9 it at a random instant, resume, KILLS times; then let it finish."""
    torch.optim.AdamW([torch.zeros(1, requires_grad=True)])  # its first use imports torch._dynamo (1.5 s): not per fork
    rng = random.Random(seed)
    inside_a_save = 0
    for i in range(KILLS):
        step = checkpoint_step(out, weights)
        log = str(tmp_path / f"log{i}.txt")
        process = start(main, [*args, "--max-steps", "1000000", *(["--overwrite"] if step is None else ["--resume"])],
                        log)
        process.join(rng.uniform(0.15, 0.45))
        assert process.exitcode is None, f"kill {i}: it stopped by itself: " + open(log).read()[-2000:]
        os.kill(process.pid, signal.SIGKILL)
        process.join()
        printed = open(log).read()
        assert "error" not in printed and (step is None or "step " not in printed
                                           or f"resuming from step {step} " in printed), printed[-2000:]
        after = checkpoint_step(out, weights)
        inside_a_save += os.path.isdir(out) and any(name.endswith(".tmp") for name in os.listdir(out)) or (
            after is not None and read_metadata(os.path.join(out, weights))["step"] == after + 1)
    step = checkpoint_step(out, weights)
    assert step is not None and step > 0
    process = start(main, [*args, "--max-steps", str(step + 2), "--resume"], str(tmp_path / "final.txt"))
    process.join()
    printed = open(tmp_path / "final.txt").read()
    assert process.exitcode == 0 and f"resuming from step {step} " in printed, printed[-2000:]
    assert json.load(open(os.path.join(out, "metrics.json")))["steps"] == step + 2
    return {"kills": KILLS, "resumed_at": step, "inside_a_save": inside_a_save}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    data.prepare_world(str(out), people=12, bios_per_person=2, epochs=3, vocab_size=300, seed=3, log=lambda *a: None)
    return str(out)


def test_pretraining_survives_kill_9(world, tmp_path):
    out = str(tmp_path / "run")
    args = ["--world", world, "--out", out, "--ckpt-interval", "1", *TINY]
    result = kill_and_resume(train_pretrain.main, args, out, "model.safetensors", seed=0, tmp_path=tmp_path)
    print(f"pretraining: {result}")


def test_lora_survives_kill_9(tiny_run, tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": f"Q: What is {i} plus one?\nA:", "answer": str(i + 1)}) + "\n"
                             for i in range(40)))
    out = str(tmp_path / "run")
    args = ["--data", str(pairs), "--checkpoint", tiny_run["checkpoint"], "--out", out, "--ckpt-interval", "1",
            "--batch-size", "4", "--eval-interval", "1000000", "--log-interval", "1", "--device", "cpu"]
    result = kill_and_resume(train_lora.main, args, out, "adapter.safetensors", seed=1, tmp_path=tmp_path)
    print(f"LoRA: {result}")

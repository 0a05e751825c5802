"""nanoGPT's training step beside ours, at nanoGPT's CPU "baby" shape, measured on one machine.

    python bench/bench_nanogpt.py --nanogpt ../nanoGPT                 # 2 rounds of 500 iterations
    python bench/bench_nanogpt.py --nanogpt ../nanoGPT --iters 2000 --threads 1 --rounds 3
    python bench/bench_nanogpt.py --nanogpt ../nanoGPT --threads 1 --clock cpu   # a shared machine

nanoGPT's own data/shakespeare_char/prepare.py turns a text into its character-level train.bin and
val.bin (a copy of it runs in --work, so the checkout is not touched, and on a text we have: this
machine may be offline). Then, in fresh processes, one after the other (A B A B): nanoGPT's
train.py with its README's CPU command, and nanolevels.train.train() on the same two files at the
same shape. Printed: each side's median milliseconds per iteration (the first 10% discarded) and
the ratio. References: karpathy/nanoGPT (README "I only have a macbook", train.py).
"""

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from nanolevels import cli, data  # noqa: E402
from nanolevels.files import atomic_write  # noqa: E402
from nanolevels.model import GPT, GPTConfig  # noqa: E402
from nanolevels.train import EVAL_STEP_OFFSET, TrainConfig, train  # noqa: E402

TEXT_CHARS = 1_115_394  # as many characters as TinyShakespeare, the text nanoGPT's README uses
# the README's CPU command, less the iteration count; its config file sets the rest (lr 1e-3 to
# 1e-4, beta2 0.99, warmup 100); bias stays nanoGPT's default (False), ours is GPT-2's (True)
BABY = ["--device=cpu", "--compile=False", "--eval_iters=20", "--log_interval=1",
        "--block_size=64", "--batch_size=12", "--n_layer=4", "--n_head=4", "--n_embd=128",
        "--dropout=0.0"]
ITER_LINE = re.compile(r"^iter (\d+): loss [\d.]+, time ([\d.]+)ms", re.M)
# --clock cpu: nanoGPT's train.py run as it is, but its time.time() (its dt) reads the CPU time of
# the process, which a busy machine's other jobs do not add to
CPU_CLOCK = ("import os, runpy, sys, time; time.time = time.process_time; sys.argv = sys.argv[1:]; "
             "sys.path.insert(0, os.path.dirname(sys.argv[0])); "
             "runpy.run_path(sys.argv[0], run_name='__main__')")
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
PARAMS_LINE = re.compile(r"^number of parameters: ([\d.]+)M", re.M)  # less the position table


def parse_args(argv):
    p = cli.ArgumentParser(description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nanogpt", help="a checkout of karpathy/nanoGPT (its train.py is run)")
    p.add_argument("--iters", type=int, default=500,
                   help="training iterations per run (nanoGPT's README: 2000) (default: 500)")
    p.add_argument("--rounds", type=int, default=2,
                   help="runs of each side, alternating (default: 2)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(),
                   help="torch threads of both sides (default: torch's own here, "
                        f"{torch.get_num_threads()})")
    p.add_argument("--clock", choices=tuple(CLOCKS), default="wall",
                   help="wall: elapsed time, as nanoGPT prints it; cpu: the CPU time of each "
                        "process, steadier where other jobs share the cores (with several "
                        "threads it sums them: the work, not the speed) (default: wall)")
    p.add_argument("--text", default=None,
                   help="the text to train on, e.g. TinyShakespeare's input.txt (default: the "
                        f"first {TEXT_CHARS:,} characters of the tiny world's pretrain.txt)")
    p.add_argument("--work", default="out/bench_nanogpt",
                   help="folder for the prepared data and the runs (default: out/bench_nanogpt)")
    p.add_argument("--side", choices=("ours",), help=argparse.SUPPRESS)  # one run, in a child
    args = p.parse_args(argv)
    args.work = os.path.abspath(args.work)  # the children run in other folders
    for name in ("iters", "rounds", "threads"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be at least 1, got {getattr(args, name)}")
    if args.side is None and not (args.nanogpt and os.path.isfile(
            os.path.join(args.nanogpt, "train.py"))):
        raise ValueError(f"--nanogpt {args.nanogpt} is not a nanoGPT checkout (no train.py); "
                         "clone https://github.com/karpathy/nanoGPT and give its folder")
    return args


def data_folder(work: str) -> str:
    return os.path.join(work, "data", "shakespeare_char")


def prepare(args) -> str:
    """Run nanoGPT's prepare.py on a text, in --work (its train.py runs there and finds
    data/shakespeare_char/ and configurator.py); which text it read."""
    out = data_folder(args.work)
    os.makedirs(out, exist_ok=True)
    if args.text is None:
        pretrain = os.path.join(cli.WORLD_DIR, "pretrain.txt")
        if not os.path.exists(pretrain):
            data.prepare_world(cli.WORLD_DIR)
        with open(pretrain, encoding="utf-8") as f:
            text = f.read(TEXT_CHARS)
        source = f"the first {len(text):,} characters of {os.path.relpath(pretrain)}"
    else:
        with open(args.text, encoding="utf-8") as f:
            text = f.read()
        source = f"{args.text} ({len(text):,} characters)"
    atomic_write(os.path.join(out, "input.txt"), text)
    shutil.copy(os.path.join(args.nanogpt, "data", "shakespeare_char", "prepare.py"), out)
    shutil.copy(os.path.join(args.nanogpt, "configurator.py"), args.work)
    child(["prepare.py"], out, "nanoGPT's prepare.py", args.threads)
    tokens, vocab = char_tokens(args.work)
    return (f"{source}: {len(tokens['train']):,} train and {len(tokens['val']):,} val characters, "
            f"vocab {vocab}")


def child(cmd: list[str], cwd: str, name: str, threads: int) -> str:
    """Run cmd (a Python script and its arguments) in cwd with `threads` torch threads; stdout."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUTF8": "1"}
    done = subprocess.run([sys.executable, *cmd], cwd=cwd, env=env, capture_output=True,
                          text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise OSError(f"{name} failed (exit {done.returncode}): {last}")
    return done.stdout


def nanogpt_run(args) -> tuple[list[float], float]:
    """(ms of each iteration of one nanoGPT run, as its train.py prints them (it evaluates at 0
    only), millions of parameters)."""
    flags = [f"--max_iters={args.iters}", f"--lr_decay_iters={args.iters}",
             f"--eval_interval={args.iters + 1}"]
    config = os.path.join(os.path.abspath(args.nanogpt), "config", "train_shakespeare_char.py")
    script = os.path.join(os.path.abspath(args.nanogpt), "train.py")
    shim = ["-c", CPU_CLOCK] if args.clock == "cpu" else []
    out = child([*shim, script, config, *BABY, *flags], args.work, "nanoGPT's train.py",
                args.threads)
    ms, params = [float(ms) for _, ms in ITER_LINE.findall(out)], PARAMS_LINE.search(out)
    if not ms or params is None:
        raise OSError(f"nanoGPT's train.py printed no 'iter N: loss L, time Tms' lines or no "
                      f"'number of parameters'; is {args.nanogpt} karpathy/nanoGPT?")
    return ms, float(params[1])


def ours_run(args) -> tuple[list[float], float]:
    """(ms of each training step of one run of ours, in a fresh process like nanoGPT's, millions
    of parameters)."""
    out = child([os.path.abspath(__file__), "--side", "ours", "--work", args.work,
                 "--iters", str(args.iters), "--threads", str(args.threads), "--clock", args.clock],
                ROOT, "nanolevels' train()", args.threads)
    row = json.loads(out.strip().splitlines()[-1])
    return row["ms"], row["params"]


def char_tokens(work: str) -> tuple[dict, int]:
    """({split: its ids}, the vocabulary size) from nanoGPT's train.bin and val.bin (uint16, as
    ours); prepare.py numbers the characters of the whole text, so the largest id + 1."""
    tokens = {split: data.load_tokens(os.path.join(data_folder(work), f"{split}.bin"))
              for split in ("train", "val")}
    return tokens, int(max(t.max() for t in tokens.values())) + 1


def ours_steps(work: str, iters: int, clock) -> dict:
    """Train at the baby shape with nanolevels.train.train() on nanoGPT's files: {"ms": each
    step's, timed from one step's first batch to the next's (all the loop does in between counts),
    "params": millions, counted as nanoGPT does}."""
    tokens, vocab = char_tokens(work)
    cfg = TrainConfig(max_steps=iters, batch_size=12, lr=1e-3, min_lr=1e-4, warmup_steps=100,
                      beta2=0.99, eval_interval=iters + 1, eval_batches=20, log_interval=1,
                      ckpt_interval=iters + 1, seed=1337)
    torch.manual_seed(cfg.seed)
    model = GPT(GPTConfig(vocab_size=vocab, block_size=64, n_layer=4, n_head=4, n_embd=128,
                          dropout=0.0))
    stamps = []

    def get_batch(split, step, micro):
        if split == "train" and micro == 0 and step < EVAL_STEP_OFFSET:
            stamps.append(clock())
        return data.get_lm_batch(tokens[split], cfg.batch_size, 64, cfg.seed, step, micro)

    train(model, cfg, get_batch, os.path.join(work, "out-nanolevels"), torch.device("cpu"),
          torch.float32, lambda step: None, log=lambda line: print(line, file=sys.stderr))
    return {"ms": [1000 * (b - a) for a, b in zip(stamps, stamps[1:])],
            "params": model.num_params(non_embedding=True) / 1e6}


def steady(ms: list[float]) -> list[float]:
    """The iterations after the first 10% (warm-up: allocator, caches, the step-0 evaluation)."""
    return ms[len(ms) // 10:]


def compare(args) -> None:
    """The runs, alternating, each printed as it ends; then both medians and their ratio."""
    runs, params = {"nanoGPT": [], "nanolevels": []}, {}
    for r in range(args.rounds):
        for name, run in (("nanoGPT", nanogpt_run), ("nanolevels", ours_run)):
            ms, params[name] = run(args)
            ms = steady(ms)
            runs[name].append(ms)
            print(f"round {r + 1}: {name:10s} {statistics.median(ms):6.2f} ms/iter "
                  f"(median of {len(ms)}; quartiles {np.percentile(ms, 25):.2f}-"
                  f"{np.percentile(ms, 75):.2f})", flush=True)
    medians = {name: statistics.median(sum(r, [])) for name, r in runs.items()}
    for name, m in medians.items():
        rounds = ", ".join(f"{statistics.median(r):.2f}" for r in runs[name])
        print(f"{name:10s} median {m:6.2f} ms/iter over all rounds (each round: {rounds})")
    print(f"parameters (less the position table): nanoGPT {params['nanoGPT']:.2f}M (no biases, its "
          f"default), nanolevels {params['nanolevels']:.2f}M (GPT-2's biases)")
    ratio = medians["nanoGPT"] / medians["nanolevels"]
    print(f"speed of nanolevels relative to nanoGPT: {ratio:.3f}x (above 1: ours is faster)")


def main(argv=None):
    args = parse_args(argv)
    if args.side == "ours":
        torch.set_num_threads(args.threads)
        print(json.dumps(ours_steps(args.work, args.iters, CLOCKS[args.clock])))
        return
    source = prepare(args)
    print(f"text: {source} (prepared by nanoGPT's data/shakespeare_char/prepare.py)")
    print(f"shape: 4 layers, 4 heads, 128 wide, block 64, batch 12, dropout 0, no compile, "
          f"float32 on the CPU; {args.iters} iterations a run; torch threads: {args.threads}; "
          f"clock: {args.clock}")
    compare(args)


if __name__ == "__main__":
    sys.exit(cli.run(main))

"""Benchmark level 4: training tokens/s and MFU, KV-cache generation speed, peak memory.

    python bench/bench_model.py            # about a minute on 2 CPU cores
    python bench/bench_model.py --quick    # fewer steps

MFU (model FLOPs utilisation) = achieved training FLOP/s / this machine's fp32 matmul peak, both
measured in this run: training FLOPs per token from the PaLM formula (6N + 12*L*C*T).
"""

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from nanolevels.device import peak_rss_mb  # noqa: E402
from nanolevels.model import GPT, GPTConfig  # noqa: E402

# (name, config, batch size): nanoGPT's "baby" shakespeare-char shape (65 characters), and our default
# (the default world's 1746-token vocabulary)
SHAPES = [
    ("nanoGPT baby (4x128, block 64, batch 12)",
     dict(vocab_size=65, n_layer=4, n_head=4, n_embd=128, block_size=64), 12),
    ("nanolevels default (4x128, block 256, batch 8)",
     dict(vocab_size=1746, n_layer=4, n_head=4, n_embd=128, block_size=256), 8),
]


def matmul_peak(n: int = 1024, seconds: float = 2.0) -> float:
    """Best fp32 FLOP/s of an n x n matmul over a few repeats: the ceiling MFU is measured against."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    best, t_end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        t0 = time.perf_counter()
        for _ in range(5):
            a @ b
        best = max(best, 5 * 2 * n**3 / (time.perf_counter() - t0))
    return best


def time_steps(model, x, steps: int) -> tuple[float, torch.optim.Optimizer]:
    """(ms per training step: forward, backward, AdamW over the trainable parameters; the optimizer),
    after a few warmup steps."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    for i in range(steps + 3):
        if i == 3:
            t0 = time.perf_counter()
        _, loss = model(x, x)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return (time.perf_counter() - t0) / steps * 1000, opt


def train_speed(config: dict, batch: int, steps: int) -> tuple[float, float, int]:
    """(tokens/s, ms per step, FLOPs per token) of full training steps on random tokens."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(**config))
    x = torch.randint(0, config["vocab_size"], (batch, config["block_size"]))
    ms, _ = time_steps(model, x, steps)
    return batch * config["block_size"] / (ms / 1000), ms, model.estimate_flops_per_token()


@torch.no_grad()
def generation_speed(new_tokens: int = 256) -> dict:
    """Tokens/s generating new_tokens greedily with and without the KV cache, default shape."""
    torch.manual_seed(0)
    config = SHAPES[1][1]
    model = GPT(GPTConfig(**config)).eval()
    idx = torch.randint(0, config["vocab_size"], (1, 8))
    out = {}
    for use_cache in (True, False):
        t0 = time.perf_counter()
        model.generate(idx, new_tokens, temperature=0, use_cache=use_cache)
        out["cache" if use_cache else "no_cache"] = new_tokens / (time.perf_counter() - t0)
    out["speedup"] = out["cache"] / out["no_cache"]
    return out


def run(quick: bool = False) -> dict:
    peak = matmul_peak(seconds=1.0 if quick else 2.0)
    results = {"matmul_peak_gflops": peak / 1e9, "threads": torch.get_num_threads(), "train": {}}
    for name, config, batch in SHAPES:
        tok_s, ms, flops = train_speed(config, batch, steps=5 if quick else 20)
        results["train"][name] = {"tokens_per_s": tok_s, "ms_per_step": ms, "mfu": tok_s * flops / peak}
    results["generate"] = generation_speed()
    results["peak_rss_mb"] = peak_rss_mb()
    return results


def report(r: dict) -> None:
    print(f"fp32 matmul peak: {r['matmul_peak_gflops']:.1f} GFLOP/s ({r['threads']} threads)")
    for name, t in r["train"].items():
        print(f"train {name}: {t['tokens_per_s'] / 1000:.1f}k tok/s, {t['ms_per_step']:.1f} ms/step, "
              f"MFU {100 * t['mfu']:.0f}%")
    g = r["generate"]
    print(f"generate 256 tokens (default shape): KV cache {g['cache']:.0f} tok/s, no cache "
          f"{g['no_cache']:.0f} tok/s, cache speed-up {g['speedup']:.1f}x")
    print(f"peak RSS of this benchmark: {r['peak_rss_mb']:.0f} MB")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer steps, shorter peak measurement")
    report(run(p.parse_args().quick))

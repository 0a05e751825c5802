"""Benchmark level 3: one LoRA training step vs one full fine-tuning step, and merged-adapter speed.

    python bench/bench_lora.py [--quick]

Same model shape (the default), same batch, same run. LoRA still runs the whole forward and
backward pass (gradients flow through the frozen layers to reach the adapters), so its step is
only somewhat cheaper; what it saves is optimizer state (AdamW keeps two moments per trainable
number) and the size of what is saved. After merge_lora the adapter lives inside the base
weights, so inference costs exactly what the base model costs: the ratio should be ~1.0.
"""

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_lora  # noqa: E402
from bench_model import time_steps  # noqa: E402
from nanolevels.lora import merge_lora  # noqa: E402
from nanolevels.model import GPT, GPTConfig  # noqa: E402

CONFIG = dict(vocab_size=1746, block_size=256, n_layer=4, n_head=4, n_embd=128)
DEFAULTS = train_lora.parse_args([])  # the adapter and batch that train_lora.py trains by default
BATCH = DEFAULTS.batch_size


def step_time(model, x, steps: int) -> tuple[float, int]:
    """(ms per training step, bytes of AdamW state: two moments per trainable number)."""
    ms, opt = time_steps(model, x, steps)
    state_bytes = sum(t.numel() * t.element_size() for s in opt.state.values() for t in s.values()
                      if torch.is_tensor(t) and t.dim() > 0)
    return ms, state_bytes


@torch.no_grad()
def generation_ms(model, steps: int = 128) -> float:
    """ms per generated token (KV cache, greedy), best of 5 runs."""
    idx = torch.randint(0, CONFIG["vocab_size"], (1, 16))
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        model.generate(idx, steps, temperature=0)
        best = min(best, (time.perf_counter() - t0) / steps * 1000)
    return best


def run(quick: bool = False) -> dict:
    steps = 3 if quick else 10
    torch.manual_seed(0)
    x = torch.randint(0, CONFIG["vocab_size"], (BATCH, CONFIG["block_size"]))
    full = GPT(GPTConfig(**CONFIG))
    full_ms, full_state = step_time(full, x, steps)
    lora = GPT(GPTConfig(**CONFIG))
    train_lora.add_adapter(lora, DEFAULTS)
    lora_ms, lora_state = step_time(lora, x, steps)
    base = GPT(GPTConfig(**CONFIG)).eval()
    merged = GPT(GPTConfig(**CONFIG))
    train_lora.add_adapter(merged, DEFAULTS)
    merge_lora(merged)
    merged.eval()
    base_gen, merged_gen = generation_ms(base), generation_ms(merged)
    return {"full_step_ms": full_ms, "lora_step_ms": lora_ms, "full_optimizer_bytes": full_state,
            "lora_optimizer_bytes": lora_state, "base_ms_per_token": base_gen, "merged_ms_per_token": merged_gen,
            "merged_over_base": merged_gen / base_gen}


def report(r: dict) -> None:
    print(f"training step (batch {BATCH} x {CONFIG['block_size']}): full {r['full_step_ms']:.0f} ms, "
          f"LoRA {r['lora_step_ms']:.0f} ms ({r['lora_step_ms'] / r['full_step_ms']:.2f}x)")
    print(f"AdamW state: full {r['full_optimizer_bytes'] / 1e6:.2f} MB, LoRA {r['lora_optimizer_bytes'] / 1e6:.3f} MB "
          f"({r['full_optimizer_bytes'] / r['lora_optimizer_bytes']:.0f}x less)")
    print(f"generation: base {r['base_ms_per_token']:.2f} ms/token, merged adapter {r['merged_ms_per_token']:.2f} "
          f"ms/token (ratio {r['merged_over_base']:.2f})")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer timed steps")
    report(run(p.parse_args().quick))

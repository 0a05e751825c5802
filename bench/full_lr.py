"""Full fine-tuning's learning rate, chosen on the dev people: closed-book exact match per rate.

    python bench/full_lr.py                            # the default model and world, rates 3e-3 .. 3e-5
    python bench/full_lr.py --checkpoint out/pretrain/model.safetensors --world data/world --rates 1e-3,1e-4

Each rate runs `train_lora.py --full --lr R --min-lr R/10` with the default steps and dev check,
into <out>/lr-R, and the table shows exact match on the dev people (the choosing split) and the
train people (what it was trained on). train_lora.FULL_LR is the rate with the best dev score, the
lower rate on a tie (it disturbs the stored facts less): LoRA's rate erases what pretraining stored.
A rate that reaches the dev check stops there, so rates that pass it tie near the check's level.
"""

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import train_lora  # noqa: E402
from nanolevels import cli  # noqa: E402
from nanolevels.files import read_json  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default="out/pretrain/model.safetensors", help="the base model")
    p.add_argument("--world", default=cli.WORLD_DIR, help="the prepared world (default: data/world)")
    p.add_argument("--rates", default="3e-3,1e-3,3e-4,1e-4,3e-5", help="comma-separated peak learning rates")
    p.add_argument("--out", default="out/bench/full_lr", help="one run per rate goes to <out>/lr-R")
    args = p.parse_args(argv)
    try:
        rates = [float(r) for r in args.rates.split(",")]
    except ValueError:
        raise ValueError(f"--rates takes comma-separated numbers, e.g. 1e-3,1e-4; got {args.rates!r}") from None
    results = {}
    for rate in rates:
        out = os.path.join(args.out, f"lr-{rate:g}")
        print(f"== full fine-tuning at lr {rate:g}", flush=True)
        train_lora.main(["--full", "--lr", str(rate), "--min-lr", str(rate / 10), "--checkpoint", args.checkpoint,
                         "--world", args.world, "--out", out, "--overwrite"])
        results[rate] = read_json(os.path.join(out, "metrics.json"))
    print("\n| lr | dev people (chooses) | train people | steps |\n|---|---|---|---|")
    for rate, m in results.items():
        print(f"| {rate:g} | {100 * m['acc']['dev']:.1f}% | {100 * m['acc']['train']:.1f}% | {m['steps']} |")
    best = max(results, key=lambda r: (results[r]["acc"]["dev"], -r))
    print(f"best on dev: lr {best:g} (train_lora.FULL_LR is {train_lora.FULL_LR[0]:g})")


if __name__ == "__main__":
    sys.exit(cli.run(main))

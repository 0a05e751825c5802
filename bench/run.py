"""Every benchmark of levels 4-1 and of serving in one run, then one summary table.

    python bench/run.py            # a few minutes on 2 CPU cores
    python bench/run.py --quick    # under 2 minutes

Speed is compared as ratios measured in the same run (KV cache vs none, LoRA vs full step, search
vs the bare matrix product), because shared machines make absolute numbers noisy.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_lora  # noqa: E402
import bench_model  # noqa: E402
import bench_retrieval  # noqa: E402
import bench_serve  # noqa: E402
import bench_tokenizer  # noqa: E402

BENCHES = [("tokenizer", bench_tokenizer), ("model", bench_model), ("lora", bench_lora), ("retrieval", bench_retrieval),
           ("serve", bench_serve)]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smaller corpora and fewer repeats")
    quick = p.parse_args().quick
    r = {}
    for name, bench in BENCHES:
        print(f"== {name}")
        r[name] = bench.run(quick)
        bench.report(r[name])
    t, m, lo, s = r["tokenizer"], r["model"], r["lora"], r["retrieval"]["search"]
    serve = {policy: r["serve"]["runs"][policy, max(bench_serve.CLIENTS)] for policy in ("one", "static", "continuous")}
    default = m["train"][bench_model.SHAPES[1][0]]
    baby = m["train"][bench_model.SHAPES[0][0]]
    rows = [
        ("tokenizer: BPE training", f"{t['train_s']:.2f} s for {t['num_merges']} merges ({t['corpus_mb']:.1f} MB)"),
        ("tokenizer: tiktoken vs pure-Python encode", f"{t['speedup']:.0f}x ({t['tiktoken_mb_s']:.1f} MB/s)"),
        ("train: nanoGPT baby shape", f"{baby['tokens_per_s'] / 1000:.1f}k tok/s, {baby['ms_per_step']:.0f} ms/step, "
                                      f"MFU {100 * baby['mfu']:.0f}%"),
        ("train: default shape", f"{default['tokens_per_s'] / 1000:.1f}k tok/s, MFU {100 * default['mfu']:.0f}%"),
        ("fp32 matmul peak", f"{m['matmul_peak_gflops']:.0f} GFLOP/s"),
        ("generate: KV cache vs none", f"{m['generate']['speedup']:.1f}x ({m['generate']['cache']:.0f} tok/s)"),
        ("LoRA vs full step", f"{lo['lora_step_ms'] / lo['full_step_ms']:.2f}x time, "
                              f"{lo['full_optimizer_bytes'] / lo['lora_optimizer_bytes']:.0f}x less optimizer state"),
        ("merged adapter vs base inference", f"{lo['merged_over_base']:.2f}x"),
        ("retrieval top-5, 1 query vs bare product", f"{s['single']['ratio']:.2f}x ({s['single']['search_ms']:.1f} ms)"),
        ("retrieval top-5, 64 queries vs bare product", f"{s['batch64']['ratio']:.2f}x ({s['batch64']['search_ms']:.1f} ms)"),
        (f"serving, {max(bench_serve.CLIENTS)} clients: continuous batching vs one at a time",
         f"{serve['continuous']['tokens_per_s'] / serve['one']['tokens_per_s']:.1f}x tokens/s "
         f"({serve['continuous']['tokens_per_s']:.0f} tok/s), p95 latency {serve['continuous']['p95_latency_s']:.2f}s "
         f"(static {serve['static']['p95_latency_s']:.2f}s)"),
        ("peak memory (this process)", f"{bench_model.peak_rss_mb():.0f} MB"),
    ]
    width = max(len(a) for a, _ in rows)
    print("\n| benchmark | result |\n|---|---|")
    for a, b in rows:
        print(f"| {a.ljust(width)} | {b} |")


if __name__ == "__main__":
    main()

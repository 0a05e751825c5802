"""The seeds table: the whole pipeline for several seeds, and every row's mean, min and max.

    python bench/seeds.py                # seeds 1337, 1338, 1339: three full runs (see the README for the time)
    python bench/seeds.py --seeds 5      # five seeds
    python bench/seeds.py --tiny         # toy sizes, in seconds: checks the table, not the claims
    python bench/seeds.py --keep         # also update the repository's kept copy in docs/ (see below)

One run on one machine is one trajectory: float results differ between CPUs (kernels, summation
order), and a skill that arrives by a phase change can arrive on one trajectory and not on another.
So a claim of the report card holds when it holds at the MIN over seeds, and this script judges it
there. Seed S runs `python -m nanolevels --seed S --out <out>/seed-S` in its own process (its own
world, its own training seeds; finished steps are reused like any orchestrator run), then the
table goes to <out>/seeds.md and <out>/seeds.json, and its picture to <out>/seeds.svg. With --keep,
also to docs/seeds.md, docs/seeds.json (report.md shows its ranges beside a run's numbers) and
docs/report.svg (the README's picture).
"""

import argparse
import os
import shlex
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from nanolevels import cli  # noqa: E402
from nanolevels.files import atomic_write, read_json, shown, write_json  # noqa: E402
from nanolevels.report import KEPT_DIR, seeds_svg  # noqa: E402
from nanolevels.train import format_eta  # noqa: E402


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=3, help="how many seeds to run (default: 3)")
    p.add_argument("--first-seed", type=int, default=1337,
                   help="seeds are first-seed, first-seed + 1, ... (default: 1337, the default run's seed)")
    p.add_argument("--out", default="out/seeds", help="each seed's run goes to <out>/seed-S (default: out/seeds)")
    p.add_argument("--tiny", action="store_true", help="toy sizes (python -m nanolevels --tiny)")
    p.add_argument("--args", default="", help='further flags for python -m nanolevels, e.g. "--device cuda"')
    p.add_argument("--keep", action="store_true", help="also write the table and its picture where the repository "
                   "keeps them: docs/seeds.md, docs/seeds.json, docs/report.svg")
    args = p.parse_args(argv)
    if args.seeds < 1:
        raise ValueError(f"--seeds must be at least 1, got {args.seeds}")
    if args.keep and args.tiny:
        raise ValueError("--keep replaces the kept table of the default sizes; not with --tiny")
    return args


def spread(values: list) -> dict | None:
    """{mean, min, max} of the values, or None where the cell does not apply."""
    if any(v is None for v in values):
        return None
    return {"mean": sum(values) / len(values), "min": min(values), "max": max(values)}


def table(reports: dict) -> dict:
    """Every row's accuracy spread over the seeds' reports ({seed: report.json}), and each target
    judged on every seed: it holds at the MIN over seeds when it holds on each of them."""
    first = next(iter(reports.values()))
    rows = []
    for i, row in enumerate(first["rows"]):
        per_seed = [r["rows"][i] for r in reports.values()]
        rows.append({"method": row["method"], "level": row["level"],
                     **{f"acc_{s}": spread([r[f"acc_{s}"] for r in per_seed]) for s in ("test", "new")},
                     "wall_s": spread([r["wall_s"] for r in per_seed])})
    targets = {name: [seed for seed, r in reports.items() if not r["targets"][name]] for name in first["targets"]}
    return {"seeds": list(reports), "rows": rows, "targets_missed_by_seed": targets,
            "retrieval": {name: {k: spread([r["retrieval"][name][k] for r in reports.values()]) for k in v}
                          for name, v in first["retrieval"].items()},
            "stopped": {seed: r["stopped"] for seed, r in reports.items()},
            "total_wall_s": spread([r["total_wall_s"] for r in reports.values()]),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in reports.values()),
            "machine": first["machine"]}


def markdown(t: dict, command: str) -> str:
    def cell(c, pct=True):
        if c is None:
            return "-"
        f = (lambda x: f"{100 * x:.1f}%") if pct else (lambda x: f"{x:.3f}")
        return f"{f(c['mean'])} ({f(c['min'])} - {f(c['max'])})"

    n = len(t["seeds"])
    lines = [f"# nanolevels seeds table: {n} seed{'s' * (n > 1)} ({', '.join(map(str, t['seeds']))})", "",
             f"`{command}`. Each cell: the mean over seeds (min - max). Every seed is its own world and its own "
             "training seeds. Exact match of a greedy answer, except pretrain-cloze (a biography sentence "
             "completed). A claim holds when it holds at the MIN.", "",
             "| method | level | test people | new people | wall time (mean) |", "|---|---|---|---|---|"]
    for row in t["rows"]:
        lines.append(f"| {row['method']} | {row['level']} | {cell(row['acc_test'])} | {cell(row['acc_new'])} | "
                     f"{format_eta(row['wall_s']['mean'])} |")
    lines += ["", "| target | seeds where it holds |", "|---|---|"]
    for name, missed in t["targets_missed_by_seed"].items():
        lines.append(f"| {name} | {n - len(missed)} of {n}" + (f" (missed: seed {', '.join(map(str, missed))})"
                                                                 if missed else "") + " |")
    lines += ["", "| retrieval of new people's biographies | recall@1 | recall@5 |", "|---|---|---|"]
    for name, r in t["retrieval"].items():
        lines.append(f"| {name} | {cell(r['recall@1'], False)} | {cell(r['recall@5'], False)} |")
    mc = t["machine"]
    lines += ["", f"Whole run per seed: {format_eta(t['total_wall_s']['mean'])} mean, "
              f"{format_eta(t['total_wall_s']['max'])} max; peak memory {t['peak_rss_mb']:.0f} MB. "
              f"Machine: {mc['device']}, {mc['threads']} torch threads, {mc['cpu_count']} CPUs, torch {mc['torch']}.", "",
              "Why each training run stopped:", ""]
    lines += [f"- seed {seed}: " + "; ".join(f"{k}: {v}" for k, v in why.items()) for seed, why in t["stopped"].items()]
    return "\n".join(lines) + "\n"


def main(argv=None):
    args = parse_args(argv)
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    reports = {}
    for i, seed in enumerate(seeds, 1):
        out = os.path.abspath(os.path.join(args.out, f"seed-{seed}"))  # the run's cwd is the repository
        cmd = [sys.executable, "-m", "nanolevels", "--seed", str(seed), "--out", out,
               *(["--tiny"] if args.tiny else []), *shlex.split(args.args)]
        print(f"== seed {seed} ({i} of {len(seeds)}): {' '.join(map(shown, cmd[1:]))}", flush=True)
        if subprocess.run(cmd, cwd=ROOT).returncode != 0:
            raise OSError(f"the run for seed {seed} failed (its output is above); fix it, then run this again: "
                          "finished steps are reused")
        reports[seed] = read_json(os.path.join(out, "report.json"))
    t = table(reports)
    command = "python bench/seeds.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    text = markdown(t, command.strip())
    print("\n" + text)
    for folder, picture in [(args.out, "seeds.svg")] + ([(KEPT_DIR, "report.svg")] if args.keep else []):
        atomic_write(os.path.join(folder, "seeds.md"), text)
        write_json(os.path.join(folder, "seeds.json"), t)
        atomic_write(os.path.join(folder, picture), seeds_svg(t))
        print(f"wrote seeds.md, seeds.json and {picture} in {shown(folder)}")


if __name__ == "__main__":
    sys.exit(cli.run(main))

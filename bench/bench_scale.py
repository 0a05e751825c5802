"""Cost curves: every step of the pipeline at growing world sizes, and how each one grows.

    python bench/bench_scale.py                       # 340, 1,000, 3,000, 10,000 people
    python bench/bench_scale.py --people 340,1000     # a quick curve
    python bench/bench_scale.py --stored              # pretraining steps until the dev checks pass

Each size is one run of the orchestrator's steps (nanolevels/__main__.py: plan, run_steps), each
step its own process, at a small model (SMALL_PRETRAIN, SMALL_FINETUNE): <out>/people-N/steps.json
keeps its wall time and peak memory, and its files say what it processed. k is the slope of a
least-squares line through (log people, log seconds): time ~ people^k; 1 is linear. "graph
(tables)" clusters the graph a perfect reader would extract (from the world's tables): a small
model's reader finds no edges, so its own graph step says nothing of Louvain. The graph step reads
every document with the model, the slowest step by far: by default it runs up to 3,000 people.
--stored instead pretrains the default model until the dev cloze check passes, at a few small world
sizes: the steps (and tokens) it takes grow with the facts to store.
"""

import argparse
import json
import math
import os
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from nanolevels import data, graph  # noqa: E402
from nanolevels.__main__ import parse_args, plan, run_steps  # noqa: E402
from nanolevels.device import peak_rss_mb  # noqa: E402
from nanolevels.files import read_json  # noqa: E402

SMALL_PRETRAIN = ("--n-layer 1 --n-head 2 --n-embd 32 --max-steps 50 --eval-interval 25 "
                  "--eval-batches 1 --log-interval 25")
SMALL_FINETUNE = ("--max-steps 10 --eval-interval 5 --eval-batches 1 --log-interval 5 "
                  "--examples 2000")


def run_size(people: int, root: str, threads: int, with_graph: bool) -> dict:
    """Every step at a world of `people`; {step: its record in steps.json}."""
    out = os.path.join(root, f"people-{people}")
    args = parse_args(["--out", out, "--threads", str(threads), "--world-args",
                       f"--people {people}", "--pretrain-args", SMALL_PRETRAIN,
                       "--finetune-args", SMALL_FINETUNE])
    steps = [s for s in plan(args) if with_graph or s.name != "graph"]
    records = run_steps(args, steps)
    for step in steps:
        records[step.name]["processed"] = processed(step.name, out, args.world)
    return records


def questions(metrics: dict) -> int:
    """The test and new questions a step's report rows scored (the first row's)."""
    row = metrics["rows"][0]
    return (row["n_test"] or 0) + (row["n_new"] or 0)


def processed(step: str, out: str, world: str) -> str:
    """What the step worked through, read from its files."""
    def metrics(*path):
        return read_json(os.path.join(out, *path, "metrics.json"))
    if step == "world":
        docs = sum(1 for _ in open(os.path.join(world, "docs.jsonl"), encoding="utf-8"))
        tokens = os.path.getsize(os.path.join(world, "train.bin")) // 2
        return f"{tokens / 1e6:,.1f}M tokens written, {docs:,} documents"
    if step == "pretrain":
        m = metrics("pretrain")
        return f"{m['tokens_seen'] / 1e3:,.0f}k tokens trained, {questions(m):,} cloze prompts"
    if step == "graph":
        g = read_json(os.path.join(out, "rag", "graph", "metrics.json"))["graph"]
        return f"{g['extraction']['asked']:,} questions read from the documents"
    folder = {"prompting": ["prompt"], "rag": ["rag"], "lora-qa": ["lora", "qa"],
              "full-ft-qa": ["full", "qa"], "lora-rag-qa": ["lora", "rag-qa"],
              "agent": ["lora", "agent"]}[step]
    extra = ""
    if step == "rag":
        extra = f" over {len(data.load_documents(world)):,} documents"
    return f"{questions(metrics(*folder)):,} questions scored{extra}"


def tables_graph(world: str) -> dict:
    """Vote, adjacency, hierarchical Louvain and reports on the graph of the world's tables."""
    people, companies = data.load_tables(world)
    t0 = time.time()
    edges = [{"source": s, "relation": r, "target": t, "docs": [s]}
             for s, r, t in sorted(graph.true_facts(people, companies))]
    nodes = {n: {"name": n, "type": n.split(":")[0], "docs": []}
             for e in edges for n in (e["source"], e["target"])}
    g = graph.vote({"nodes": nodes, "edges": edges})
    comms = graph.communities(graph.adjacency(g))
    graph.reports(g, graph.leaves(comms))
    return {"wall_s": time.time() - t0, "nodes": len(g["nodes"]), "edges": len(g["edges"]),
            "communities": len(comms)}


def run_tables_graph(world: str) -> dict:
    """tables_graph in a process of its own, so that its peak memory is its own."""
    child = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--tables-graph", world],
                             stdout=subprocess.PIPE, text=True)
    out = child.stdout.read()
    _, _, usage = os.wait4(child.pid, 0)
    r = json.loads(out)
    return {"wall_s": r["wall_s"], "peak_rss_mb": peak_rss_mb(usage),
            "processed": f"{r['edges']:,} edges, {r['nodes']:,} nodes, {r['communities']:,} "
                         f"communities"}


def slope(xs, ys) -> float | None:
    """The least-squares slope of log(ys) on log(xs): the exponent k of ys ~ xs^k."""
    pairs = [(math.log(x), math.log(y)) for x, y in zip(xs, ys) if y and y > 0]
    if len(pairs) < 2:
        return None
    return float(np.polyfit(*zip(*pairs), 1)[0])


def print_table(sizes: list[int], runs: dict) -> None:
    """Seconds and peak MB per step and size, the exponents, and what the biggest size processed."""
    names = list(dict.fromkeys(name for r in runs.values() for name in r))
    print(f"\n{'step':<16}" + "".join(f"{f'{n:,} people':>17}" for n in sizes)
          + f"{'k time':>8}{'k mem':>7}  processed at the largest size")
    for name in names:
        have = [n for n in sizes if name in runs[n]]
        cells = [f"{runs[n][name]['wall_s']:7.1f}s {runs[n][name]['peak_rss_mb']:6.0f}MB"
                 if name in runs[n] else "-" for n in sizes]
        k = [slope(have, [runs[n][name][key] for n in have]) for key in ("wall_s", "peak_rss_mb")]
        k = [f"{x:.2f}" if x is not None else "-" for x in k]
        print(f"{name:<16}" + "".join(f"{c:>17}" for c in cells) + f"{k[0]:>8}{k[1]:>7}  "
              f"{runs[have[-1]][name]['processed']}")
    total = [sum(r["wall_s"] for r in runs[n].values()) for n in sizes]
    print(f"{'all steps':<16}" + "".join(f"{t:>16.0f}s" for t in total))


def cost_curves(args) -> None:
    sizes = [int(n) for n in args.people.split(",")]
    runs = {}
    t0 = time.time()
    for n in sizes:
        runs[n] = run_size(n, args.out, args.threads, n <= args.graph_up_to)
        runs[n]["graph (tables)"] = run_tables_graph(os.path.join(args.out, f"people-{n}", "world"))
    print_table(sizes, runs)
    print(f"bench wall time {time.time() - t0:.0f}s; load average {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} CPUs (other jobs count too)")


def stored(args) -> None:
    """Steps of the default model until the dev people's cloze accuracy reaches --stop-cloze."""
    rows = []
    for n in [int(n) for n in args.stored_people.split(",")]:
        out = os.path.join(args.out, f"stored-{n}")
        world = os.path.join(out, "world")
        if not os.path.exists(os.path.join(world, "meta.json")):
            data.prepare_world(world, people=n, log=lambda *a: None)
        t0 = time.time()
        subprocess.run([sys.executable, os.path.join(ROOT, "train_pretrain.py"), "--world", world,
                        "--out", os.path.join(out, "pretrain"), "--overwrite", "--threads",
                        str(args.threads), "--stop-cloze", str(args.stop_cloze), "--stop-reading",
                        "0", "--max-steps", str(args.max_steps), "--eval-interval", "100"],
                       check=True,
                       stdout=subprocess.DEVNULL)
        m = read_json(os.path.join(out, "pretrain", "metrics.json"))
        rows.append((n, m["steps"], m["tokens_seen"], time.time() - t0, m["stopped"]))
    print(f"\n{'people':>7}{'steps':>7}{'tokens':>13}{'seconds':>9}  why it stopped")
    for n, steps, tokens, secs, why in rows:
        print(f"{n:>7,}{steps:>7,}{tokens:>13,}{secs:>9.0f}  {why}")
    k = slope([r[0] for r in rows], [r[1] for r in rows])
    print(f"steps ~ people^{k:.2f}" if k is not None else "")


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--people", default="340,1000,3000,10000", help="world sizes, comma-separated")
    p.add_argument("--graph-up-to", type=int, default=3000,
                   help="the largest world whose graph step runs (default: 3000)")
    p.add_argument("--out", default="/tmp/nanolevels-scale", help="where the runs go")
    p.add_argument("--threads", type=int, default=1, help="torch threads per step (default: 1)")
    p.add_argument("--stored", action="store_true",
                   help="pretraining steps of the default model until dev cloze >= --stop-cloze")
    p.add_argument("--stored-people", default="85,170,340", help="world sizes for --stored")
    p.add_argument("--stop-cloze", type=float, default=0.9)
    p.add_argument("--max-steps", type=int, default=8000, help="--stored: the step cap")
    p.add_argument("--tables-graph", help=argparse.SUPPRESS)  # the child of run_tables_graph
    args = p.parse_args()
    if args.tables_graph:
        print(json.dumps(tables_graph(args.tables_graph)))
    elif args.stored:
        stored(args)
    else:
        cost_curves(args)


if __name__ == "__main__":
    main()

"""`python -m nanolevels`: all four levels end to end on the tiny world, then the report card.

    python -m nanolevels            # prepare, pretrain, prompt, RAG, LoRA, full FT, LoRA RAG-QA, graph -> out/report.md
    python -m nanolevels --fresh    # redo every step instead of reusing finished ones
    python -m nanolevels --tiny     # a seconds-long run at a toy size (what the tests run)
    python -m nanolevels --seed 7   # another world and other training seeds (bench/seeds.py runs several)
    python -m nanolevels --device cuda --dtype bfloat16   # on a GPU: the training steps under bf16 autocast
    python -m nanolevels --device cuda --out out/big --world-args "--people 2000" --pretrain-args "--n-layer 8"

Each step is one of the level scripts, run in this process with its defaults (plus --*-args). A step is
reused when it ran before with the same arguments and nothing it read or wrote has changed since: out/steps.json
records each step's fingerprints (of the world's files, the model, the adapter, its metrics.json), and a
copied or moved out/ folder is still current. The report card (nanolevels/report.py renders it):
out/report.md, rows = methods, columns = accuracy on test and new people with its 95% interval,
trainable parameters, wall time; out/report.json, its numbers; out/report.svg, them as bars; and
out/loss.svg, the training runs' loss curves.
"""

import argparse
import os
import platform
import shlex
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # the level scripts live next to the package
import prompt  # noqa: E402
import rag  # noqa: E402
import train_lora  # noqa: E402
import train_pretrain  # noqa: E402
from data.world import prepare  # noqa: E402
from nanolevels import checkpoint, cli  # noqa: E402
from nanolevels.data import load_questions  # noqa: E402
from nanolevels.device import DTYPES, peak_rss_mb, pick_device  # noqa: E402
from nanolevels.evaluate import wilson  # noqa: E402
from nanolevels.files import atomic_write, fingerprint_files, read_json, read_jsonl, shown, write_json  # noqa: E402
from nanolevels.report import KEPT_DIR, loss_svg, markdown, report_svg  # noqa: E402
from nanolevels.train import format_eta  # noqa: E402

# what --tiny changes: a world and model small enough for a test to run every level in seconds
TINY_WORLD = ["--people", "12", "--bios-per-person", "2", "--epochs", "3", "--vocab-size", "300"]
TINY_PRETRAIN = ["--n-layer", "2", "--n-head", "2", "--n-embd", "32", "--block-size", "256", "--max-steps", "20",
                 "--eval-interval", "10", "--eval-batches", "1", "--log-interval", "10"]
TINY_FINETUNE = ["--max-steps", "6", "--batch-size", "4", "--eval-interval", "3", "--eval-batches", "1",
                 "--log-interval", "3"]


def parse_args(argv):
    p = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="out", help="where every step writes (default: out)")
    p.add_argument("--world", default=None,
                   help="the world's folder (default: data/world; <out>/world with --tiny or --world-args)")
    p.add_argument("--fresh", action="store_true", help="redo every step, even those whose outputs are current")
    p.add_argument("--tiny", action="store_true", help="toy sizes: checks the whole pipeline in seconds")
    p.add_argument("--seed", type=int, default=None,
                   help="the world's seed and every training seed at once (the world then goes to <out>/world); "
                        "default: each script's own")
    p.add_argument("--world-args", default="",
                   help='extra flags for data/world/prepare.py, e.g. "--people 2000" (the world then goes to <out>/world)')
    p.add_argument("--pretrain-args", default="",
                   help='extra flags for train_pretrain.py, e.g. "--n-layer 8 --n-embd 256 --max-steps 6000"')
    p.add_argument("--finetune-args", default="",
                   help='extra flags for the three train_lora.py steps (full fine-tuning included: a --lr here '
                        'replaces its own), e.g. "--max-steps 1500"')
    cli.add_device_flags(p, dtype=False)  # --device --threads
    p.add_argument("--dtype", default=None, choices=list(DTYPES),
                   help="compute dtype of the training steps (autocast), e.g. bfloat16 on a GPU; the other steps "
                        "run in float32 (default: each script's own, float32)")
    args = p.parse_args(argv)
    own_world = args.tiny or args.world_args or args.seed is not None  # never rewrite the shared data/world with other settings
    args.world = args.world or (os.path.join(args.out, "world") if own_world else os.path.join(ROOT, "data", "world"))
    return args


def plan(args) -> list[tuple]:
    """(name, level, script main, argv, output metrics.json, {name: path} of what it reads and makes) per step."""
    out, world, dev = args.out, args.world, ["--device", args.device]
    ckpt = os.path.join(out, "pretrain", "model.safetensors")
    common = ["--checkpoint", ckpt, "--world", world, *dev]
    tiny = args.tiny
    lora_qa, lora_rag, agent = (os.path.join(out, "lora", name) for name in ("qa", "rag-qa", "agent"))
    full_qa = os.path.join(out, "full", "qa")
    seed = [] if args.seed is None else ["--seed", str(args.seed)]
    dtype = [] if args.dtype is None else ["--dtype", args.dtype]  # only when given: default steps keep their argv
    world_args, pretrain_args = shlex.split(args.world_args), shlex.split(args.pretrain_args)
    # --overwrite: a training step runs only when it is meant to start again
    finetune = ["--overwrite", *dtype, *seed, *(TINY_FINETUNE if tiny else []), *shlex.split(args.finetune_args)]
    return [
        ("world", 4, prepare.main, ["--out", world, *seed, *(TINY_WORLD if tiny else []), *world_args],
         os.path.join(world, "meta.json"), {"data": world}),
        ("pretrain", 4, train_pretrain.main,
         ["--world", world, "--out", os.path.join(out, "pretrain"), "--overwrite", *dev, *dtype, *seed,
          *(TINY_PRETRAIN if tiny else []), *pretrain_args],
         os.path.join(out, "pretrain", "metrics.json"), {"data": world, "model": ckpt}),
        ("prompting", 1, prompt.main, ["--eval", "--out", os.path.join(out, "prompt"), *common, *seed],
         os.path.join(out, "prompt", "metrics.json"), {"model": ckpt}),
        ("rag", 2, rag.main, ["--eval", "--out", os.path.join(out, "rag"), *common, *seed],
         os.path.join(out, "rag", "metrics.json"), {"model": ckpt}),
        ("lora-qa", 3, train_lora.main, ["--out", lora_qa, *common, *finetune],
         os.path.join(lora_qa, "metrics.json"),
         {"model": ckpt, "adapter": os.path.join(lora_qa, "adapter.safetensors")}),
        ("full-ft-qa", 3, train_lora.main, ["--full", "--out", full_qa, *common, *finetune],
         os.path.join(full_qa, "metrics.json"),
         {"model": ckpt, "finetuned": os.path.join(full_qa, "model.safetensors")}),
        ("lora-rag-qa", 3, train_lora.main,
         ["--task", "rag-qa", "--out", lora_rag, "--rag-out", os.path.join(out, "rag"), *common,
          *(["--examples", "40"] if tiny else []), *finetune],
         os.path.join(lora_rag, "metrics.json"),
         {"model": ckpt, "adapter": os.path.join(lora_rag, "adapter.safetensors")}),
        ("agent", 2, train_lora.main,
         ["--task", "agent", "--out", agent, "--init-adapter", os.path.join(lora_rag, "adapter.safetensors"),
          "--rag-out", os.path.join(out, "rag"), *common, *(["--examples", "40"] if tiny else []), *finetune],
         os.path.join(agent, "metrics.json"),
         {"model": ckpt, "reader": os.path.join(lora_rag, "adapter.safetensors"),
          "adapter": os.path.join(agent, "adapter.safetensors")}),
        # GraphRAG reads every document with the RAG-QA reader just trained
        ("graph", 2, rag.main, ["--graph", "--eval", "--adapter", os.path.join(lora_rag, "adapter.safetensors"),
                                "--out", os.path.join(out, "rag"), *common, *seed],
         os.path.join(out, "rag", "graph", "metrics.json"),
         {"model": ckpt, "adapter": os.path.join(lora_rag, "adapter.safetensors")}),
    ]


def portable(argv: list[str], args) -> list[str]:
    """argv with the --out and --world folders written as <out> and <world>: what is in them is compared by
    fingerprint, so a copied or moved out/ folder is still current."""
    places = {args.world: "<world>", args.out: "<out>"}  # the world first: with --tiny it lies inside out/

    def place(arg):
        for path, name in places.items():
            if arg == path or arg.startswith(path + os.sep):
                return name + arg[len(path):]
        return arg
    return [place(arg) for arg in argv]


def fingerprints(output: str, paths: dict) -> dict:
    """What a step read and made, as it is now: {name: fingerprint or None if missing}, its output included.
    A checkpoint by its content (checkpoint.fingerprint), anything else by its bytes."""
    def fingerprint(path):
        if not os.path.exists(path):
            return None
        try:
            return checkpoint.fingerprint(path) if path.endswith(".safetensors") else fingerprint_files(path)
        except ValueError:  # an unreadable checkpoint: the step that makes it runs again
            return None
    return {name: fingerprint(path) for name, path in {**paths, "output": output}.items()}


def why_run(record: dict | None, argv: list[str], now: dict) -> str | None:
    """Why a step must run, or None when it ran before with these arguments and nothing it read or made has
    changed since (its record in steps.json)."""
    if now["output"] is None:
        return "its output is missing"
    if record is None:
        return "no record of its run in steps.json"
    if record["argv"] != argv:
        return "its arguments changed"
    changed = [name for name, fp in now.items() if record.get("fingerprints", {}).get(name) != fp]
    return f"its {' and '.join(changed)} changed since it ran" if changed else None


def run_steps(args) -> dict:
    """Run (or reuse, see why_run) every step; return their records (reused steps keep those of their own run).

    out/steps.json remembers each step's arguments (paths relative to <out> and <world>), fingerprints, wall time,
    torch threads and the process's peak memory when it ended: a report built later, by a process that only
    reuses steps, still says how they ran."""
    record_path = os.path.join(args.out, "steps.json")
    record = read_json(record_path) if os.path.exists(record_path) and not args.fresh else {}
    steps = plan(args)
    t_start = time.time()
    for i, (name, level, main, argv, output, paths) in enumerate(steps, 1):
        now = fingerprints(output, paths)
        reason = "--fresh" if args.fresh else why_run(record.get(name), portable(argv, args), now)
        if reason is None:
            print(f"[{i}/{len(steps)}] {name}: reusing {shown(output)}")
            continue
        print(f"\n[{i}/{len(steps)}] {name} (level {level}; {reason}): {' '.join(map(shown, argv))}")
        t0 = time.time()
        main(argv)
        record[name] = {"argv": portable(argv, args), "fingerprints": fingerprints(output, paths),
                        "wall_s": time.time() - t0, "threads": torch.get_num_threads(), "peak_rss_mb": peak_rss_mb()}
        write_json(record_path, record)
        left = sum(record.get(n, {}).get("wall_s", 0) for n, *_ in steps[i:])  # ETA from the last run, if any
        print(f"[{i}/{len(steps)}] {name} took {format_eta(record[name]['wall_s'])}; "
              f"elapsed {format_eta(time.time() - t_start)}" + (f", about {format_eta(left)} to go" if left else ""))
    return {name: record[name] for name, *_ in steps}


# What the report card claims, each judged on one run here and at the MIN over seeds in bench/seeds.py:
# (description, test on {method: row} and the retrieval table).
TARGETS = [
    ("pretrain-cloze test >= 90%", lambda r, ret: r["pretrain-cloze"]["acc_test"] >= 0.90),
    ("prompt-program test >= 85% and >= 0.9 x cloze", lambda r, ret: r["prompt-program"]["acc_test"] >= max(
        0.85, 0.9 * r["pretrain-cloze"]["acc_test"])),
    ("lora-qa test >= 90%", lambda r, ret: r["lora-qa"]["acc_test"] >= 0.90),
    ("lora-rag-qa new >= 95%", lambda r, ret: r["lora-rag-qa"]["acc_new"] >= 0.95),
    ("rag-base new > zero-shot new (closed book)", lambda r, ret: r["rag-base"]["acc_new"] > r["zero-shot"]["acc_new"]),
    ("tfidf recall@1 >= 0.98", lambda r, ret: ret["tfidf"]["recall@1"] >= 0.98),
    ("agentic-rag new >= 90% and >= rag-2hop new + 40 points", lambda r, ret: r["agentic-rag"]["acc_new"] >= max(
        0.90, r["rag-2hop"]["acc_new"] + 0.40)),
    ("agentic-rag <= 2.5 retrievals per new question", lambda r, ret: r["agentic-rag"]["calls_new"] <= 2.5),
    ("graph-rag-global >= 90% and >= chunk-rag-global + 40 points",
     lambda r, ret: r["graph-rag-global"]["acc_new"] >= max(0.90, r["chunk-rag-global"]["acc_new"] + 0.40)),
]


def build_report(args, steps: dict) -> dict:
    """The report card's numbers from the steps' metrics.json files and their records (run_steps)."""
    times = {name: r["wall_s"] for name, r in steps.items()}
    m = {name: read_json(path) for name, _, _, _, path, _ in plan(args) if name != "world"}
    pre, pr, rg = m["pretrain"], m["prompting"]["acc"], m["rag"]
    params = pre["params"]
    # every row scores all questions of a split (cloze: the same people's facts, one per question)
    n = {hops: {split: len(qs) for split, qs in load_questions(args.world, "test", "new", hops=hops).items()}
         for hops in (1, 2)}

    def row(method, level, test, new, trainable, step, example=None, questions="one-hop"):
        count = n[2 if questions == "two-hop" else 1]
        return {"method": method, "level": level, "questions": questions, "acc_test": test, "acc_new": new,
                "ci_test": None if test is None else wilson(test, count["test"]),
                "ci_new": None if new is None else wilson(new, count["new"]),
                "n_test": None if test is None else count["test"], "n_new": None if new is None else count["new"],
                "trainable_params": trainable, "step": step, "wall_s": times.get(step, 0.0),
                "example": example,  # {test, new: {question, answer, prediction}}: the first question, answered
                "fingerprints": m[step]["fingerprints"]}  # of the model (and adapter) this row scored

    def examples(kept, test="test", new="new"):
        """The first test and new question answered, from a metrics.json 'example' (None in one from before)."""
        return None if kept is None else {"test": kept[test], "new": kept[new]}

    rows = [row("pretrain-cloze", 4, pre["cloze_acc"]["test"], pre["cloze_acc"]["new"], params, "pretrain")]
    for method, key in (("zero-shot", "zero-shot"), ("k-shot", "3-shot"), ("searched-demos", "searched-demos"),
                        ("prompt-program", "prompt-program")):
        rows.append(row(method, 1, pr[key]["test"], pr[key]["new"], 0, "prompting",
                        examples(m["prompting"].get("example", {}).get(key))))
    rows.append(row("rag-base", 2, rg["acc"]["test"], rg["acc"]["new"], 0, "rag", examples(rg.get("example"))))
    for method in ("lora-qa", "full-ft-qa"):
        acc = m[method]["acc"]
        rows.append(row(method, 3, acc["test"], acc["new"], m[method]["trainable_params"], method,
                        examples(m[method].get("example"))))
    acc = m["lora-rag-qa"]["acc"]
    rows.append(row("lora-rag-qa", 3, acc["test_rag"], acc["new_rag"], m["lora-rag-qa"]["trainable_params"], "lora-rag-qa",
                    examples(m["lora-rag-qa"].get("example"), "test_rag", "new_rag")))
    # two-hop questions: the reader without the loop (its step scores these), then the agent
    reader = m["lora-rag-qa"]
    for method, key, trainable in (("closed-book-2hop", "closed-book", 0), ("rag-2hop", "rag", reader["trainable_params"]),
                                   ("oracle-2hop", "oracle", reader["trainable_params"])):
        two = reader["two_hop"][key]
        rows.append(row(method, 2, two["test"], two["new"], trainable, "lora-rag-qa", questions="two-hop"))
    agentic = m["agent"]["agentic"]
    rows.append({**row("agentic-rag", 2, agentic["test"]["acc"], agentic["new"]["acc"], m["agent"]["trainable_params"],
                       "agent", questions="two-hop"), "calls_test": agentic["test"]["calls"],
                 "calls_new": agentic["new"]["calls"]})
    g = m["graph"]  # questions about the whole collection (every split): in the new-people column
    for method in ("chunk-rag", "graph-rag"):
        acc, n_global = g["acc"][method]["overall"], g["n"]["overall"]
        rows.append({**row(f"{method}-global", 2, None, None, 0, "graph", questions="global"), "acc_new": acc,
                     "ci_new": wilson(acc, n_global), "n_new": n_global})
    models = {r["fingerprints"]["model"] for r in rows}
    if len(models) > 1:  # cannot happen through run_steps; a file changed while it ran
        raise ValueError(f"the report would mix {len(models)} models ({', '.join(sorted(models))}); run again")
    threads = sorted({r.get("threads", torch.get_num_threads()) for r in steps.values()})  # older records: this one's
    machine = {"device": str(pick_device(args.device)), "threads": ", ".join(map(str, threads)),
               "cpu_count": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
               "platform": platform.platform()}
    retrieval = {name: {k: v["new"][k] for k in ("recall@1", "recall@5")} for name, v in rg["retrieval"].items()}
    stopped = {name: m[name]["stopped"] for name in ("pretrain", "lora-qa", "full-ft-qa", "lora-rag-qa", "agent")}
    by_method = {r["method"]: r for r in rows}
    targets = {name: bool(check(by_method, retrieval)) for name, check in TARGETS}
    peak = max([peak_rss_mb(), *(r["peak_rss_mb"] for r in steps.values() if "peak_rss_mb" in r)])
    return {"total_wall_s": sum(times.values()), "peak_rss_mb": peak, "machine": machine, "rows": rows,
            "retrieval": retrieval, "targets": targets, "stopped": stopped, "seed": args.seed, "prompt_k": 3,
            "rag_k": rg["k"], "base_params": params, "program": m["prompting"]["program"], "unsure": rg["unsure"],
            "agentic": {split: agentic[split] for split in ("test", "new")},
            "graph": {key: g["graph"][key] for key in ("nodes", "edges", "communities", "build_s")}
            | {key: g["graph"]["extraction"]["voted"][key] for key in ("precision", "recall")}}


def main(argv=None):
    args = parse_args(argv)
    report = build_report(args, run_steps(args))
    # the kept seeds table was measured at the default sizes: its ranges say nothing about a run at others
    default_sizes = not (args.tiny or args.world_args or args.pretrain_args or args.finetune_args)
    seeds_path = os.path.join(KEPT_DIR, "seeds.json")
    text = markdown(report, read_json(seeds_path) if default_sizes and os.path.exists(seeds_path) else None)
    logs = {name: os.path.join(os.path.dirname(output), "log.jsonl") for name, _, _, _, output, _ in plan(args)}
    losses = {name: [(r["step"], r["loss"]) for r in read_jsonl(path) if "loss" in r]
              for name, path in logs.items() if os.path.exists(path)}  # the training steps
    atomic_write(os.path.join(args.out, "report.md"), text)
    write_json(os.path.join(args.out, "report.json"), report)
    atomic_write(os.path.join(args.out, "report.svg"), report_svg(report))
    atomic_write(os.path.join(args.out, "loss.svg"), loss_svg(losses))
    print("\n" + text)
    print(f"wrote {', '.join(shown(os.path.join(args.out, f)) for f in ('report.md', 'report.json', 'report.svg'))} "
          f"and {shown(os.path.join(args.out, 'loss.svg'))}")


if __name__ == "__main__":
    sys.exit(cli.run(main))

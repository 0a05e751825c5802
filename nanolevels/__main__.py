"""`python -m nanolevels`: all four levels end to end on the tiny world, then the report card.

    python -m nanolevels            # every step below, then out/report.md
    python -m nanolevels --fresh    # redo every step instead of reusing finished ones
    python -m nanolevels --tiny     # a seconds-long run at a toy size (what the tests run)
    python -m nanolevels --seed 7   # another world and other training seeds (see bench/seeds.py)
    python -m nanolevels --device cuda --dtype bfloat16   # the training steps under bf16 autocast
    python -m nanolevels --out out/big --world-args "--people 2000" --pretrain-args "--n-layer 8"
    python -m nanolevels --ask "What is the birth city of Liesl Sage Keswick?"   # every level's

Each step is a level script, run as its own process with the command it prints. A step is reused
when it ran before with the same arguments and nothing it read, made or runs has changed since
(nanolevels/provenance.py): out/steps.json records the fingerprints of its files and of its code,
the script and every package module it imports, so an edit to nanolevels/lora.py reruns the steps
that use LoRA and no other. The report card is the rows every step wrote into its metrics.json,
rendered by nanolevels/report.py: out/report.md, out/report.json, out/report.svg and out/loss.svg.
"""

import argparse
import os
import platform
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

import torch

from nanolevels import cli, provenance
from nanolevels.ask import ask_every_level
from nanolevels.device import DTYPES, peak_rss_mb, pick_device
from nanolevels.files import atomic_write, read_json, read_jsonl, shown, write_json
from nanolevels.report import KEPT_DIR, judge, loss_svg, markdown, report_svg
from nanolevels.train import format_eta

# what --tiny changes: a world and model small enough for a test to run every level in seconds
TINY_WORLD = ["--people", "12", "--bios-per-person", "2", "--epochs", "3", "--vocab-size", "300"]
TINY_PRETRAIN = ["--n-layer", "2", "--n-head", "2", "--n-embd", "32", "--block-size", "256",
                 "--max-steps", "20", "--eval-interval", "10", "--eval-batches", "1",
                 "--log-interval", "10"]
TINY_FINETUNE = ["--max-steps", "6", "--batch-size", "4", "--eval-interval", "3",
                 "--eval-batches", "1", "--log-interval", "3"]


def parse_args(argv):
    p = cli.ArgumentParser(description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="out", help="where every step writes (default: out)")
    p.add_argument("--world", default=None,
                   help="the world's folder (default: data/world; <out>/world with --tiny or "
                        "--world-args)")
    p.add_argument("--fresh", action="store_true",
                   help="redo every step, even those whose outputs are current")
    p.add_argument("--ask", default=None, metavar="QUESTION",
                   help="put one question to every method of the finished run in --out that can "
                        "answer it, side by side: its answer, what it read, what it trained and "
                        "what it cost (runs no step)")
    p.add_argument("--tiny", action="store_true",
                   help="toy sizes: checks the whole pipeline in seconds")
    p.add_argument("--seed", type=int, default=None,
                   help="the world's seed and every training seed at once (the world then goes to "
                        "<out>/world); default: each script's own")
    p.add_argument("--world-args", default="",
                   help='extra flags for data/world/prepare.py, e.g. "--people 2000" (the world '
                        'then goes to <out>/world)')
    p.add_argument("--pretrain-args", default="",
                   help='extra flags for train_pretrain.py, e.g. "--n-layer 8 --n-embd 256 '
                        '--max-steps 6000"')
    p.add_argument("--finetune-args", default="",
                   help='extra flags for the three train_lora.py steps (full fine-tuning '
                        'included: a --lr here replaces its own), e.g. "--max-steps 1500"')
    cli.add_device_flags(p, dtype=False)  # --device --threads
    p.add_argument("--dtype", default=None, choices=list(DTYPES),
                   help="compute dtype of the training steps (autocast), e.g. bfloat16 on a GPU; "
                        "the other steps run in float32 (default: each script's own, float32)")
    args = p.parse_args(argv)
    # never rewrite the shared data/world with other settings
    own_world = args.tiny or args.world_args or args.seed is not None
    args.world = args.world or (os.path.join(args.out, "world") if own_world else cli.WORLD_DIR)
    return args


@dataclass
class Step:
    name: str  # its key in steps.json, and the step its report rows name
    level: int
    script: str  # the lesson it runs, relative to the repository
    argv: list[str]
    output: str  # the metrics.json it writes (meta.json for the world): missing means it must run
    reads: dict[str, str]  # {name: path} of what it reads and makes, fingerprinted with its output


def plan(args) -> list[Step]:
    """Every step in order, with the arguments the orchestrator gives it."""
    out, world = args.out, args.world
    ckpt = os.path.join(out, "pretrain", "model.safetensors")
    lora_qa, reader, agent = (os.path.join(out, "lora", name) for name in ("qa", "rag-qa", "agent"))
    full_qa, rag = os.path.join(out, "full", "qa"), os.path.join(out, "rag")
    reader_file = os.path.join(reader, "adapter.safetensors")
    seed = [] if args.seed is None else ["--seed", str(args.seed)]
    # only when given: a default run's steps keep their arguments (and so are reused)
    dtype = [] if args.dtype is None else ["--dtype", args.dtype]
    common = ["--checkpoint", ckpt, "--world", world, "--device", args.device]
    # --overwrite: a training step runs only when it is meant to start again
    finetune = [*common, "--overwrite", *dtype, *seed, *(TINY_FINETUNE if args.tiny else []),
                *shlex.split(args.finetune_args)]
    examples = ["--examples", "40"] if args.tiny else []
    world_args = ["--out", world, *seed, *(TINY_WORLD if args.tiny else []),
                  *shlex.split(args.world_args)]
    pretrain = ["--world", world, "--out", os.path.dirname(ckpt), "--overwrite", "--device",
                args.device, *dtype, *seed, *(TINY_PRETRAIN if args.tiny else []),
                *shlex.split(args.pretrain_args)]

    def metrics(folder):
        return os.path.join(folder, "metrics.json")
    return [
        Step("world", 4, "data/world/prepare.py", world_args, os.path.join(world, "meta.json"),
             {"data": world}),
        Step("pretrain", 4, "train_pretrain.py", pretrain, metrics(os.path.dirname(ckpt)),
             {"data": world, "model": ckpt}),
        Step("prompting", 1, "prompt.py",
             ["--eval", "--out", os.path.join(out, "prompt"), *common, *seed],
             metrics(os.path.join(out, "prompt")), {"model": ckpt}),
        Step("rag", 2, "rag.py", ["--eval", "--out", rag, *common, *seed], metrics(rag),
             {"model": ckpt}),
        Step("lora-qa", 3, "train_lora.py", ["--out", lora_qa, *finetune], metrics(lora_qa),
             {"model": ckpt, "adapter": os.path.join(lora_qa, "adapter.safetensors")}),
        Step("full-ft-qa", 3, "train_lora.py", ["--full", "--out", full_qa, *finetune],
             metrics(full_qa),
             {"model": ckpt, "finetuned": os.path.join(full_qa, "model.safetensors")}),
        Step("lora-rag-qa", 3, "train_lora.py",
             ["--task", "rag-qa", "--out", reader, "--rag-out", rag, *examples, *finetune],
             metrics(reader), {"model": ckpt, "adapter": reader_file}),
        Step("agent", 2, "train_lora.py",
             ["--task", "agent", "--out", agent, "--init-adapter", reader_file, "--rag-out", rag,
              *examples, *finetune],
             metrics(agent), {"model": ckpt, "reader": reader_file,
                              "adapter": os.path.join(agent, "adapter.safetensors")}),
        # GraphRAG reads every document with the RAG-QA reader just trained
        Step("graph", 2, "rag.py",
             ["--graph", "--eval", "--adapter", reader_file, "--out", rag, *common, *seed],
             os.path.join(rag, "graph", "metrics.json"), {"model": ckpt, "adapter": reader_file}),
    ]


def portable(argv: list[str], args) -> list[str]:
    """argv with the --out and --world folders written as <out> and <world>: what is in them is
    compared by fingerprint, so a copied or moved out/ folder is still current."""
    places = {args.world: "<world>", args.out: "<out>"}  # the world first: --tiny's is inside out/

    def place(arg):
        for path, name in places.items():
            if arg == path or arg.startswith(path + os.sep):
                return name + arg[len(path):]
        return arg
    return [place(arg) for arg in argv]


def why_run(record: dict | None, argv: list[str], now: dict) -> str | None:
    """Why a step must run, or None when it ran before with these arguments and nothing it read,
    made or runs has changed since (its record in steps.json)."""
    if now["output"] is None:
        return "its output is missing"
    if record is None:
        return "no record of its run in steps.json"
    if record["argv"] != argv:
        return "its arguments changed"
    why = provenance.stale(record.get("fingerprints", {}), now)
    return why and f"{why} since it ran"


def launch(step: Step, args) -> tuple[int, float]:
    """Run the step's script as its own process; (exit code, its peak memory in MB). Ctrl-C reaches
    the script, which saves a checkpoint and exits: this process waits for it."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # its progress lines appear as they come
    if args.threads is not None:
        env["OMP_NUM_THREADS"] = str(args.threads)
    script = os.path.join(provenance.ROOT, step.script)
    previous = signal.signal(signal.SIGINT, lambda *_: None)  # the child starts with the default
    try:
        child = subprocess.Popen([sys.executable, script, *step.argv], env=env)
        _, status, usage = os.wait4(child.pid, 0)
    finally:
        signal.signal(signal.SIGINT, previous)
    child.returncode = os.waitstatus_to_exitcode(status)
    return child.returncode, peak_rss_mb(usage)


def run_steps(args, steps: list[Step]) -> dict:
    """Run (or reuse, see why_run) every step; their records in out/steps.json: arguments (paths
    relative to <out> and <world>), fingerprints, wall time, torch threads and peak memory, so that
    a report built from reused steps still says how they ran."""
    record_path = os.path.join(args.out, "steps.json")
    record = read_json(record_path) if os.path.exists(record_path) and not args.fresh else {}
    t_start = time.time()
    for i, step in enumerate(steps, 1):
        argv, code = portable(step.argv, args), provenance.code(step.script)
        now = {**provenance.current({**step.reads, "output": step.output}), "code": code}
        reason = "--fresh" if args.fresh else why_run(record.get(step.name), argv, now)
        if reason is None:
            print(f"[{i}/{len(steps)}] {step.name}: reusing {shown(step.output)}")
            continue
        command = " ".join(shlex.quote(shown(a)) for a in ["python", step.script, *step.argv])
        print(f"\n[{i}/{len(steps)}] {step.name} (level {step.level}; {reason}): {command}",
              flush=True)
        t0 = time.time()
        exit_code, peak = launch(step, args)
        if exit_code in (130, -signal.SIGINT):
            raise KeyboardInterrupt
        if exit_code != 0:
            print(f"[{i}/{len(steps)}] {step.name} failed (exit code {exit_code}; its output is "
                  f"above); once mended, run this again: finished steps are reused",
                  file=sys.stderr)
            raise SystemExit(exit_code)
        fingerprints = {**provenance.current({**step.reads, "output": step.output}), "code": code}
        record[step.name] = {"argv": argv, "fingerprints": fingerprints, "wall_s": time.time() - t0,
                             "threads": torch.get_num_threads(), "peak_rss_mb": peak}
        write_json(record_path, record)
        # the time to go, as the last run of each step took
        left = sum(record.get(s.name, {}).get("wall_s", 0) for s in steps[i:])
        print(f"[{i}/{len(steps)}] {step.name} took {format_eta(record[step.name]['wall_s'])}; "
              f"elapsed {format_eta(time.time() - t_start)}"
              + (f", about {format_eta(left)} to go" if left else ""))
    return {s.name: record[s.name] for s in steps}


def build_report(args, steps: list[Step], records: dict) -> dict:
    """The report card's numbers: every step's rows (from its metrics.json, with its wall time),
    what each adds to the report ("report"), why each training run stopped, how the steps ran."""
    metrics = {s.name: read_json(s.output) for s in steps}
    rows = [{**row, "step": s.name, "wall_s": records[s.name]["wall_s"]} for s in steps
            for row in metrics[s.name].get("rows", [])]
    models = {r["fingerprints"]["model"] for r in rows}
    if len(models) > 1:  # cannot happen through run_steps; a file changed while it ran
        raise ValueError(f"the report would mix {len(models)} models "
                         f"({', '.join(sorted(models))}); run again")
    extra = {key: value for s in steps for key, value in metrics[s.name].get("report", {}).items()}
    threads = sorted({r["threads"] for r in records.values()})
    machine = {"device": str(pick_device(args.device)), "threads": ", ".join(map(str, threads)),
               "cpu_count": os.cpu_count(), "torch": torch.__version__,
               "python": platform.python_version(), "platform": platform.platform()}
    peak = max([peak_rss_mb(), *(r["peak_rss_mb"] for r in records.values())])
    stopped = {s.name: metrics[s.name]["stopped"] for s in steps if "stopped" in metrics[s.name]}
    return {"total_wall_s": sum(r["wall_s"] for r in records.values()), "peak_rss_mb": peak,
            "machine": machine, "rows": rows, "seed": args.seed, "stopped": stopped,
            "tiny": args.tiny,
            # the targets are claims about the default sizes: a toy run has no verdict
            "targets": {} if args.tiny else judge(rows, extra["retrieval"]), **extra}


def print_answers(result: dict) -> None:
    """ask_every_level's table: one line per method."""
    base = result["base"]
    print(f"Q: {result['question']}  ({result['kind']} question; the right answer: "
          f"{result['truth']})\nEvery method starts from the pretrained model ({base['params']:,} "
          f"params, pretrained in {format_eta(base['step_s'])}); trained: what it adds.\n")
    print(f"{'level':<7}{'method':<18}{'answer':<28}{'read':<44}trained; cost")
    for r in result["rows"]:
        trained = "nothing"
        if r["trainable_params"]:
            trained = (f"{r['trainable_params']:,} params in step {r['step']} "
                       f"({format_eta(r['step_s'])})")
        said = f"{r['answer'] or '(nothing)'} {'✓' if r['right'] else '✗'}"
        print(f"{r['level']:<7}{r['method']:<18}{said[:27]:<28}{r['read'][:43]:<44}{trained}; "
              f"{r['answer_s']:.2f}s to answer")


def main(argv=None):
    args = parse_args(argv)
    if args.ask is not None:
        return print_answers(ask_every_level(args.ask, args.out, args.world))
    steps = plan(args)
    report = build_report(args, steps, run_steps(args, steps))
    # the kept seeds table was measured at the default sizes: its ranges say nothing about a run at
    # others
    default_sizes = not (args.tiny or args.world_args or args.pretrain_args or args.finetune_args)
    seeds_path = os.path.join(KEPT_DIR, "seeds.json")
    seeds = read_json(seeds_path) if default_sizes and os.path.exists(seeds_path) else None
    text = markdown(report, seeds)
    logs = {s.name: os.path.join(os.path.dirname(s.output), "log.jsonl") for s in steps}
    losses = {name: [(r["step"], r["loss"]) for r in read_jsonl(path) if "loss" in r]
              for name, path in logs.items() if os.path.exists(path)}  # the training steps
    atomic_write(os.path.join(args.out, "report.md"), text)
    write_json(os.path.join(args.out, "report.json"), report)
    atomic_write(os.path.join(args.out, "report.svg"), report_svg(report))
    atomic_write(os.path.join(args.out, "loss.svg"), loss_svg(losses))
    print("\n" + text)
    written = [shown(os.path.join(args.out, f)) for f in ("report.md", "report.json", "report.svg")]
    print(f"wrote {', '.join(written)} and {shown(os.path.join(args.out, 'loss.svg'))}")


if __name__ == "__main__":
    sys.exit(cli.run(main))

"""Level 3, fine-tuning: train a small LoRA adapter (or, with --full, every weight) on QA examples.

    python train_lora.py                    # --task qa: closed-book answers, from the weights
    python train_lora.py --task rag-qa      # learn to read answers out of retrieved biographies
    python train_lora.py --task agent       # from the reader: learn to ask follow-ups (agentic RAG)
    python train_lora.py --full             # full fine-tuning, the baseline LoRA is compared to
    python train_lora.py --data pairs.jsonl # your own {"prompt": ..., "answer": ...} lines
    torchrun --nproc_per_node=2 train_lora.py

The loss is on the answer tokens only. The training loop is the one pretraining uses
(nanolevels/train.py). A task is a row of TASKS: its examples, the dev check that stops it, and
its final scores. Writes out/lora/<task>/ (out/full/<task>/ with --full; <task> is "custom" with
--data): adapter.safetensors (model.safetensors with --full), log.jsonl and metrics.json with exact
match on held-out questions.
"""

import argparse
import math
import os
import random
import sys
from dataclasses import dataclass
from typing import Callable

from nanolevels import cli, data, provenance
from nanolevels.agent import evaluate_agent, retriever, two_hop_baselines
from nanolevels.checkpoint import read_metadata, save_model
from nanolevels.corpus import agent_examples, reading_examples
from nanolevels.device import pick_dtype, seed_everything
from nanolevels.evaluate import eval_qa, eval_rag, qa_accuracy, report_row
from nanolevels.files import shown, write_json
from nanolevels.lora import (DEFAULT_TARGETS, add_lora, covers, load_adapted, load_adapter,
                             merge_lora, remove_lora, save_adapter)
from nanolevels.prompting import answer_text, qa_prompt
from nanolevels.retrieval import load_or_build_index
from nanolevels.train import TrainConfig, check_out_dir, setup, train
from nanolevels.world import SPLITS

# Full fine-tuning's (lr, min_lr): LoRA's rate erases what the weights know. Chosen on the dev
# people (closed-book exact match); bench/full_lr.py prints the comparison.
FULL_LR = (1e-4, 1e-5)


# --- the tasks: what each trains on, the dev check that stops it, what it reports -----------------

def closed_book_examples(args, world):
    """The train people's questions, each alone: the model learns to answer from what it stored."""
    qa = data.load_questions(args.world, *SPLITS)
    return [[(qa_prompt(q["question"]), answer_text(q["answer"]))] for q in qa["train"]], qa


def reading(args, world):
    """Documents about fresh people and companies, then every question about the last one
    (corpus.py)."""
    questions = data.load_questions(args.world, *SPLITS)
    return reading_examples(world, args.examples, seed=args.seed), questions


def traces(args, world):
    """Self-Ask traces about fresh people at fresh companies, the retrieved documents inserted
    (corpus.py)."""
    questions = data.load_questions(args.world, *SPLITS, hops=2)
    return agent_examples(world, args.examples, seed=args.seed), questions


def closed_book_check(model, tokenizer, heldout, index):
    acc = qa_accuracy(model, tokenizer, heldout["dev"], lambda q: qa_prompt(q["question"]))
    return acc, "dev, closed book"


def reading_check(model, tokenizer, heldout, index):
    r = eval_rag(model, tokenizer, *index, heldout["dev-new"], k=2)
    by_attribute = ", ".join(f"{a} {v:.2f}" for a, v in r["by_attribute"].items())
    return r["acc"], f"dev-new with retrieval; {by_attribute}"


def agent_check(model, tokenizer, heldout, index):
    r = evaluate_agent(model, tokenizer, retriever(*index, k=1), heldout["dev-new"])
    ended = ", ".join(f"{why} {n}" for why, n in r["ended"].items())
    return r["acc"], (f"dev-new two-hop questions, agent loop; {r['calls']:.2f} retrievals each; "
                      f"ended: {ended}")


def closed_book_scores(model, tokenizer, heldout, index, args, row, log,
                       splits=("train", "dev", "test", "new")):
    """Closed book (no documents in the prompt) on the splits: (acc, example, extra metrics, report
    rows)."""
    acc, example = {}, {}
    for split in splits:
        r = eval_qa(model, tokenizer, heldout[split], lambda q: qa_prompt(q["question"]))
        acc[split], example[split] = r["acc"], r["example"]
    return acc, example, {}, [row("qa", 3, "one-hop", acc, example)]


def reading_scores(model, tokenizer, heldout, index, args, row, log):
    """Closed book, then with retrieval; the two-hop questions without the agent's loop (agent.py).
    The dev splits are left out: the dev check scored them, at the step training stopped."""
    acc, example, _, _ = closed_book_scores(model, tokenizer, heldout, index, args, row, log,
                                            ("test", "new"))
    for split in ("test", "new"):
        r = eval_rag(model, tokenizer, *index, heldout[split], k=2, log=log)
        acc[f"{split}_rag"], example[f"{split}_rag"] = r["acc"], r["example"]
    two_hop_questions = data.load_questions(args.world, "test", "new", hops=2)
    two_hop = two_hop_baselines(model, tokenizer, *index, index[0].docs, two_hop_questions)
    for name, accs in two_hop.items():
        log(f"two-hop questions, {name}: " + ", ".join(f"{s} {v:.3f}" for s, v in accs.items()))
    n = {split: len(questions) for split, questions in two_hop_questions.items()}
    rows = [row("rag-qa", 3, "one-hop", {s: acc[f"{s}_rag"] for s in ("test", "new")},
                {s: example[f"{s}_rag"] for s in ("test", "new")})]
    # closed-book-2hop is the base model: the adapter off
    rows += [row("closed-book-2hop", 2, "two-hop", two_hop["closed-book"], n=n, trainable=0),
             row("rag-2hop", 2, "two-hop", two_hop["rag"], n=n),
             row("oracle-2hop", 2, "two-hop", two_hop["oracle"], n=n)]
    return acc, example, {"two_hop": two_hop}, rows


def agent_scores(model, tokenizer, heldout, index, args, row, log):
    """The agent's loop on the test and new people's two-hop questions; on the new people's also
    its compositionality gap and, as its closed-book baseline, the loop with retrieval off."""
    acc, agentic = {}, {}
    for split in ("test", "new"):
        questions, reported = heldout[split], split == "new"
        r = evaluate_agent(model, tokenizer, retriever(*index, k=1), questions, gap=reported)
        if reported:
            r["closed_book"] = evaluate_agent(model, tokenizer, lambda query: [], questions)["acc"]
        acc[split], agentic[split] = r["acc"], r
        log(f"agentic {split}: exact match {r['acc']:.3f}, {r['calls']:.2f} retrievals each, both "
            f"documents found {r['recall_both']:.3f}, ended: "
            + ", ".join(f"{why} {n}" for why, n in r["ended"].items())
            + (f"; compositionality gap {r['gap']:.3f}; retrieval off {r['closed_book']:.3f}"
               if reported else ""))
    rows = [row("agentic-rag", 2, "two-hop", acc, calls_test=agentic["test"]["calls"],
                calls_new=agentic["new"]["calls"])]
    report = {"agentic": {s: agentic[s] for s in ("test", "new")}}
    return acc, {}, {"agentic": agentic, "report": report}, rows


@dataclass
class Task:
    examples: Callable  # (args, world) -> ((prompt, answer) turns to train on, {split: questions})
    check: Callable  # (model, tokenizer, questions, index) -> (dev exact match, what it was on)
    scores: Callable  # the final evaluation: -> (acc, example, extra metrics, report rows)
    stop_acc: float  # the dev check's threshold: a skill that arrives by a phase change stops on it
    max_steps: int  # the step cap: qa's is short, as it memorises and extracts worse if trained on
    retrieval: bool  # whether the check and the scores read retrieved documents


TASKS = {
    "qa": Task(closed_book_examples, closed_book_check, closed_book_scores, 0.97, 750, False),
    "rag-qa": Task(reading, reading_check, reading_scores, 0.98, 2500, True),
    "agent": Task(traces, agent_check, agent_scores, 0.95, 1500, True),
}


def custom_examples(args):
    """--data: the user's pairs, a tenth held out for one exact-match score."""
    pairs = data.read_pairs(args.data)
    random.Random(0).shuffle(pairs)
    n_val = max(1, len(pairs) // 10)
    return [[(p["prompt"], answer_text(p["answer"]))] for p in pairs[n_val:]], pairs[:n_val]


# --- flags -------------------------------------------------------------------------------------

def parse_args(argv):
    p = cli.ArgumentParser(description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="qa", choices=tuple(TASKS),
                   help="qa: closed-book QA pairs of train people; rag-qa: a fresh person's "
                        "biography (or a fresh company's profile), after a distractor's or alone, "
                        "then every question about it; agent: Self-Ask traces about fresh people "
                        "at fresh companies, the retrieved documents inserted, see "
                        "nanolevels/agent.py (default: qa)")
    p.add_argument("--data", default=None,
                   help="a JSONL file of your own {prompt, answer} pairs instead")
    p.add_argument("--checkpoint", default=cli.MODEL, help=f"the base model (default: {cli.MODEL})")
    p.add_argument("--world", default=cli.WORLD_DIR,
                   help="the prepared world (default: data/world)")
    p.add_argument("--out", default=None,
                   help="output folder (default: out/lora/<task>, out/full/<task> with --full; "
                        "<task> is custom with --data)")
    p.add_argument("--full", action="store_true",
                   help=f"train every weight instead of a LoRA adapter (then --lr defaults to "
                        f"{FULL_LR[0]:g} and --min-lr to {FULL_LR[1]:g}: LoRA's rate destroys "
                        f"what the weights know)")
    p.add_argument("--merge", action="store_true",
                   help="also write merged.safetensors: base + adapter as one model")
    p.add_argument("--init-adapter", default=None,
                   help=f"start from this adapter's weights (its r, alpha and targets) instead of "
                        f"a fresh adapter; 'none' for a fresh one (default: {cli.READER} for "
                        f"--task agent, none otherwise)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the adapter/model in --out (with the same flags: r, alpha, "
                        "targets...)")
    p.add_argument("--overwrite", action="store_true",
                   help="start again in an --out that holds a run, deleting it (without --resume "
                        "or this, such an --out is refused)")
    p.add_argument("--examples", type=int, default=20000,
                   help="rag-qa and agent: examples to make, each about a different fresh person "
                        "or company (default: 20000)")
    p.add_argument("--rag-out", default=cli.RAG_OUT,
                   help=f"rag-qa and agent: where the retrieval index is cached "
                        f"(default: {cli.RAG_OUT})")
    p.add_argument("--stop-acc", type=float, default=None,
                   help="stop once the dev check reaches this exact match, checked at each "
                        "evaluation (--max-steps is then the cap): closed-book questions about the "
                        "dev people for qa, retrieval-augmented questions about the dev-new people "
                        "for rag-qa, their two-hop questions answered by the agent loop for agent; "
                        "above 1 turns it off; none with --data (default: "
                        + ", ".join(f"{name} {t.stop_acc:g}" for name, t in TASKS.items()) + ")")
    p.add_argument("--max-steps", type=int, default=None,
                   help="optimizer steps at most (default: "
                        + ", ".join(f"{name} {t.max_steps}" for name, t in TASKS.items()) + ")")
    add_lora_flags(p.add_argument_group("LoRA"))
    # one flag per field of TrainConfig (--max-steps is above): --batch-size --grad-accum --lr
    # --min-lr --warmup-steps --weight-decay --beta1 --beta2 --grad-clip --eval-interval
    # --eval-batches --log-interval --ckpt-interval --seed --compile
    cli.add_config_flags(p, TrainConfig, "training", exclude=("max_steps",), batch_size=16, lr=3e-3,
                         min_lr=3e-4, warmup_steps=30, weight_decay=0.0, eval_interval=100,
                         log_interval=50, ckpt_interval=200)
    cli.add_device_flags(p)  # --device --threads --dtype
    known = p.parse_known_args(argv)[0]
    p.set_defaults(stop_acc=TASKS[known.task].stop_acc, max_steps=TASKS[known.task].max_steps)
    if known.full:
        p.set_defaults(lr=FULL_LR[0], min_lr=FULL_LR[1])
    return check_args(p.parse_args(argv))


def add_lora_flags(g) -> None:
    """--r --alpha --rslora --lora-dropout --targets: the adapter (lora.add_lora's arguments)."""
    g.add_argument("--r", type=int, default=16, help="adapter rank (default: 16)")
    g.add_argument("--alpha", type=float, default=32.0,
                   help="the update is scaled by alpha / r (default: 32)")
    g.add_argument("--rslora", action="store_true",
                   help="scale by alpha / sqrt(r) instead (rsLoRA)")
    g.add_argument("--lora-dropout", type=float, default=0.0,
                   help="dropout on the adapter's input (default: 0)")
    g.add_argument("--targets", default=",".join(DEFAULT_TARGETS),
                   help="comma-separated module-name suffixes to adapt (default: "
                        "attn.c_attn,attn.c_proj; add mlp.c_fc,mlp.c_proj for the MLP)")


def check_args(args):
    """The flags' defaults that depend on others, and the combinations that cannot work."""
    if not args.stop_acc > 0:  # NaN is not above 0 either
        raise ValueError(f"--stop-acc must be above 0 (above 1 turns the dev check off), "
                         f"got {args.stop_acc}")
    if not (math.isfinite(args.alpha) and args.alpha > 0):
        raise ValueError(f"--alpha must be a positive number, got {args.alpha}")
    if not 0 <= args.lora_dropout < 1:
        raise ValueError(f"--lora-dropout must be in [0, 1), got {args.lora_dropout}")
    task = "custom" if args.data else args.task
    args.out = args.out or os.path.join("out", "full" if args.full else "lora", task)
    if args.init_adapter is None:
        args.init_adapter = cli.READER if args.task == "agent" and not args.data else "none"
    if args.init_adapter != "none" and (args.full or args.resume):
        raise ValueError("--init-adapter starts a new LoRA adapter: not with --full or --resume")
    if args.init_adapter != "none" and not os.path.exists(args.init_adapter):
        raise ValueError(f"no adapter at {args.init_adapter}: train the reader first (python "
                         f"train_lora.py --task rag-qa), or pass --init-adapter none to start "
                         f"from a fresh adapter")
    return args


def check_loaded_adapter(meta: dict, path: str, args) -> None:
    """--resume and --init-adapter train a saved adapter: refuse flags that describe another one,
    rather than ignore them."""
    flags = {"--r": ("r", args.r), "--alpha": ("alpha", args.alpha),
             "--rslora": ("rslora", args.rslora), "--lora-dropout": ("dropout", args.lora_dropout)}
    for flag, (key, given) in flags.items():
        if meta[key] != given:
            raise ValueError(f"{path} is an adapter with {flag} {meta[key]}, not {given}: give the "
                             f"flags it was trained with")
    targets, names = args.targets.split(","), meta["targets"]
    if not (all(any(covers(n, t) for t in targets) for n in names)
            and all(any(covers(n, t) for n in names) for t in targets)):
        raise ValueError(f"{path} adapts other layers ({', '.join(names[:2])}, ...) than --targets "
                         f"{args.targets}: give the flags it was trained with")


def make_trainable(model, args, device, weights_path, base: str, log):
    """What this run trains: all weights (--full, restored by train() on --resume), a saved adapter
    (--resume, --init-adapter) or a fresh one; the model to train. base: --checkpoint's
    fingerprint, which a resumed run must have started from (load_adapter checks an adapter's)."""
    if args.full and args.resume:
        started = read_metadata(weights_path).get("base") if os.path.exists(weights_path) else None
        if started not in (None, base):
            raise ValueError(f"{weights_path} was trained from another base model than "
                             f"--checkpoint {args.checkpoint}; resume with the --checkpoint it "
                             f"started from")
        model, _ = load_adapted(weights_path, None, device)
    elif args.resume or args.init_adapter != "none":
        path = weights_path if args.resume else args.init_adapter
        meta = load_adapter(path, model)
        check_loaded_adapter(meta, path, args)
        if args.resume and meta.get("task", args.task) != args.task:
            raise ValueError(f"{path} is a --task {meta['task']} adapter, not {args.task}: give "
                             f"the --task it was trained for")
        if not args.resume:
            log(f"starting from the adapter {path}")
    elif not args.full:
        add_lora(model, args.targets.split(","), r=args.r, alpha=args.alpha,
                 dropout=args.lora_dropout, rslora=args.rslora)
    return model.train()


# --- the run -----------------------------------------------------------------------------------

def dev_check(args, task, model, tokenizer, heldout, index, log):
    """on_eval(step) for train(): exact match on a dev split, the way the skill is used
    (Task.check), never on test or new; "stop" (the reason) once it reaches --stop-acc."""
    def on_eval(step) -> dict:
        if step == 0 or task is None:
            return {}
        model.eval()
        acc, what = task.check(model, tokenizer, heldout, index)
        model.train()
        log(f"  dev check: exact match {acc:.3f} (stop at {args.stop_acc}) on {what}")
        if acc >= args.stop_acc:
            return {"dev_acc": acc, "stop": f"dev exact match {acc:.3f} >= {args.stop_acc}"}
        return {"dev_acc": acc}
    return on_eval


def final_scores(args, task, model, tokenizer, heldout, index, trainable, weights_path,
                 log) -> dict:
    """The trained model scored on the held-out questions (Task.scores; with --data, the held-out
    pairs), with the fingerprints of the base and of what was trained: the metrics to write."""
    # the base it started from and what it trained, so its numbers are never read for other weights
    trained = "finetuned" if args.full else "adapter"
    fingerprints = {"model": provenance.checkpoint(args.checkpoint),
                    trained: provenance.checkpoint(weights_path)}
    n = {split: len(qs) for split, qs in (heldout if task else {"heldout": heldout}).items()}

    def row(method, level, questions, acc, example=None, n=n, trainable=trainable, **extra):
        """A report row of this run ("qa" is lora-qa, or full-ft-qa with --full)."""
        name = f"{'full-ft' if args.full else 'lora'}-{method}" if method in TASKS else method
        example = example and {s: example[s] for s in ("test", "new")}
        return report_row(name, level, questions, acc, n, trainable, fingerprints, example, **extra)

    model.eval()
    if task is None:
        pairs = [{"question": p["prompt"], "answer": p["answer"]} for p in heldout]
        acc = {"heldout": qa_accuracy(model, tokenizer, pairs, lambda q: q["question"])}
        example, extra, rows = {}, {}, []
    else:
        acc, example, extra, rows = task.scores(model, tokenizer, heldout, index, args, row, log)
    base_params = model.num_params()
    return {"task": args.task, "full": args.full, "trainable_params": trainable,
            "total_params": base_params, "trainable_pct": 100 * trainable / base_params, "acc": acc,
            "example": example, "n": n, "adapter_bytes": os.path.getsize(weights_path),
            "base_bytes": os.path.getsize(args.checkpoint), "fingerprints": fingerprints, **extra,
            "rows": rows}


def main(argv=None):
    args = parse_args(argv)
    device, ddp = setup(args.device)
    dtype = pick_dtype(args.dtype, device)
    cfg = cli.config_from_args(TrainConfig, args)
    log = print if ddp.is_main else (lambda *a, **k: None)
    weights_name = "model.safetensors" if args.full else "adapter.safetensors"
    replaces = check_out_dir(args.out, weights_name, args.resume, args.overwrite,
                             extra=("merged.safetensors",), ddp=ddp)
    model, tokenizer = load_adapted(args.checkpoint, None, device)
    base = provenance.checkpoint(args.checkpoint)
    base_params = model.num_params()
    task = None if args.data else TASKS[args.task]
    world = None if task is None else data.load_world(args.world)
    turns, heldout = custom_examples(args) if task is None else task.examples(args, world)
    examples = [data.encode_example(tokenizer, t, model.config.block_size) for t in turns]
    n_val = max(1, len(examples) // 20)
    val, train_examples = examples[:n_val], examples[n_val:]

    os.makedirs(args.out, exist_ok=True)
    weights_path = os.path.join(args.out, weights_name)
    seed_everything(cfg.seed)
    model = make_trainable(model, args, device, weights_path, base, log)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log(f"{args.task if args.data is None else args.data}: {len(train_examples):,} training "
        f"examples, {len(val)} for validation; training {trainable:,} of {base_params:,} "
        f"parameters ({100 * trainable / base_params:.2f}%)"
        + ("" if args.full else f" (LoRA r={args.r} on {args.targets})"))

    def get_batch(split, step, micro):
        return data.get_example_batch(train_examples if split == "train" else val, cfg.batch_size,
                                      tokenizer.eot_id, cfg.seed, step, micro, ddp.rank,
                                      ddp.world_size)

    def save_weights(step):
        if args.full:
            save_model(weights_path, model, tokenizer, step=step, base=base)
        else:
            save_adapter(weights_path, model, step=step, task=args.task)

    index = None  # (index, embedder) of every document, for the tasks that read retrieved ones
    if task is not None and task.retrieval and ddp.is_main:
        index = load_or_build_index(args.rag_out, data.load_documents(args.world), "tfidf", log=log)

    on_eval = dev_check(args, task, model, tokenizer, heldout, index, log)
    metrics = train(model, cfg, get_batch, args.out, device, dtype, save_weights, on_eval,
                    args.resume, ddp, log, replaces)
    if not ddp.is_main:
        return
    metrics |= final_scores(args, task, model, tokenizer, heldout, index, trainable, weights_path,
                            log)
    if args.merge and not args.full:
        merge_lora(model)
        remove_lora(model)  # the merged weights stay; the model is a plain GPT again
        merged = os.path.join(args.out, "merged.safetensors")
        save_model(merged, model, tokenizer)
        log(f"wrote {shown(merged)}: the base with the adapter folded in; it loads like any "
            f"checkpoint")
    write_json(os.path.join(args.out, "metrics.json"), metrics)
    log("exact match: " + ", ".join(f"{k} {v:.3f}" for k, v in metrics["acc"].items()))
    log(f"wrote {shown(weights_path)} ({metrics['adapter_bytes']:,} bytes; the base is "
        f"{metrics['base_bytes']:,}) and {os.path.join(args.out, 'metrics.json')}")


if __name__ == "__main__":
    sys.exit(cli.run(main))

"""Level 3, fine-tuning: train a small LoRA adapter (or, with --full, every weight) on QA examples.

    python train_lora.py                    # --task qa: closed-book answers about people in the weights
    python train_lora.py --task rag-qa      # learn to read answers out of retrieved biographies
    python train_lora.py --task agent       # from the rag-qa reader: learn to ask follow-ups (agentic RAG)
    python train_lora.py --full             # full fine-tuning, the baseline LoRA is compared to
    python train_lora.py --data pairs.jsonl # your own {"prompt": ..., "answer": ...} lines
    torchrun --nproc_per_node=2 train_lora.py

The loss is on the answer tokens only. The training loop is the one pretraining uses
(nanolevels/train.py). Writes out/lora/<task>/ (out/full/<task>/ with --full; <task> is "custom" with
--data): adapter.safetensors (model.safetensors with --full), log.jsonl and metrics.json with exact
match on held-out questions.
"""

import argparse
import os
import random
import sys

from nanolevels import cli, data
from nanolevels.agent import evaluate_agent, retriever, two_hop_baselines
from nanolevels.checkpoint import fingerprint, save_model
from nanolevels.device import pick_dtype, seed_everything
from nanolevels.evaluate import eval_qa, eval_rag, qa_accuracy
from nanolevels.files import shown, write_json
from nanolevels.lora import DEFAULT_TARGETS, add_lora, covers, load_adapter, merge_lora, remove_lora, save_adapter
from nanolevels.prompting import answer_text, qa_prompt
from nanolevels.retrieval import load_or_build_index
from nanolevels.train import TrainConfig, check_out_dir, setup, train
from nanolevels.world import SPLITS, agent_examples, reading_examples

# Full fine-tuning's (lr, min_lr): LoRA's rate erases what the weights know. Chosen on the dev people
# (closed-book exact match); bench/full_lr.py prints the comparison.
FULL_LR = (1e-4, 1e-5)
# Each task's dev check and step cap: (--stop-acc, --max-steps). Extraction (qa) and reading (rag-qa)
# arrive by a phase change whose step varies by machine and world, so training stops on the skill.
# qa's cap is short: trained on, it memorises the train people's answers and extracts worse.
TASK_DEFAULTS = {"qa": (0.97, 750), "rag-qa": (0.98, 2500), "agent": (0.95, 1500)}


def parse_args(argv):
    p = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="qa", choices=tuple(TASK_DEFAULTS),
                   help="qa: closed-book QA pairs of train people; rag-qa: a fresh person's biography (or a fresh "
                        "company's profile), after a distractor's or alone, then every question about it; agent: "
                        "Self-Ask traces about fresh people at fresh companies, the retrieved documents inserted, "
                        "see nanolevels/agent.py (default: qa)")
    p.add_argument("--data", default=None, help="a JSONL file of your own {prompt, answer} pairs instead")
    p.add_argument("--checkpoint", default="out/pretrain/model.safetensors",
                   help="the base model (default: out/pretrain/model.safetensors)")
    p.add_argument("--world", default=data.WORLD_DIR, help="the prepared world (default: data/world)")
    p.add_argument("--out", default=None,
                   help="output folder (default: out/lora/<task>, out/full/<task> with --full; <task> is custom with --data)")
    p.add_argument("--full", action="store_true",
                   help=f"train every weight instead of a LoRA adapter (then --lr defaults to {FULL_LR[0]:g} and "
                        f"--min-lr to {FULL_LR[1]:g}: LoRA's rate destroys what the weights know)")
    p.add_argument("--merge", action="store_true", help="also write merged.safetensors: base + adapter as one model")
    p.add_argument("--init-adapter", default=None,
                   help=f"start from this adapter's weights (its r, alpha and targets) instead of a fresh adapter; "
                        f"'none' for a fresh one (default: {data.READER} for --task agent, none otherwise)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the adapter/model in --out (with the same flags: r, alpha, targets...)")
    p.add_argument("--overwrite", action="store_true",
                   help="start again in an --out that holds a run, deleting it (without --resume or this, such an "
                        "--out is refused)")
    p.add_argument("--examples", type=int, default=20000,
                   help="rag-qa and agent: examples to make, each about a different fresh person or company "
                        "(default: 20000)")
    p.add_argument("--rag-out", default="out/rag",
                   help="rag-qa and agent: where the retrieval index is cached (default: out/rag)")
    p.add_argument("--stop-acc", type=float, default=None,
                   help="stop once the dev check reaches this exact match, checked at each evaluation (--max-steps "
                        "is then the cap): closed-book questions about the dev people for qa, retrieval-augmented "
                        "questions about the dev-new people for rag-qa, their two-hop questions answered by the "
                        "agent loop for agent; above 1 turns it off; none with --data "
                        "(default: " + ", ".join(f"{t} {a:g}" for t, (a, _) in TASK_DEFAULTS.items()) + ")")
    p.add_argument("--max-steps", type=int, default=None,
                   help="optimizer steps at most (default: " + ", ".join(f"{t} {n}" for t, (_, n) in
                                                                        TASK_DEFAULTS.items()) + ")")
    g = p.add_argument_group("LoRA")
    g.add_argument("--r", type=int, default=16, help="adapter rank (default: 16)")
    g.add_argument("--alpha", type=float, default=32.0, help="the update is scaled by alpha / r (default: 32)")
    g.add_argument("--rslora", action="store_true", help="scale by alpha / sqrt(r) instead (rsLoRA)")
    g.add_argument("--lora-dropout", type=float, default=0.0, help="dropout on the adapter's input (default: 0)")
    g.add_argument("--targets", default=",".join(DEFAULT_TARGETS),
                   help="comma-separated module-name suffixes to adapt (default: attn.c_attn,attn.c_proj; "
                        "add mlp.c_fc,mlp.c_proj for the MLP)")
    # one flag per field of TrainConfig (--max-steps is above): --batch-size --grad-accum --lr --min-lr --warmup-steps
    # --weight-decay --beta1 --beta2 --grad-clip --eval-interval --eval-batches --log-interval --ckpt-interval --seed
    # --compile
    cli.add_config_flags(p, TrainConfig, "training", exclude=("max_steps",), batch_size=16, lr=3e-3, min_lr=3e-4,
                         warmup_steps=30, weight_decay=0.0, eval_interval=100, log_interval=50, ckpt_interval=200)
    cli.add_device_flags(p)  # --device --threads --dtype
    known = p.parse_known_args(argv)[0]
    stop_acc, max_steps = TASK_DEFAULTS[known.task]
    p.set_defaults(stop_acc=stop_acc, max_steps=max_steps)
    if known.full:
        p.set_defaults(lr=FULL_LR[0], min_lr=FULL_LR[1])
    args = p.parse_args(argv)
    if args.stop_acc <= 0:
        raise ValueError(f"--stop-acc must be above 0 (above 1 turns the dev check off), got {args.stop_acc}")
    args.out = args.out or os.path.join("out", "full" if args.full else "lora", "custom" if args.data else args.task)
    if args.init_adapter is None:
        args.init_adapter = data.READER if args.task == "agent" and not args.data else "none"
    if args.init_adapter != "none" and (args.full or args.resume):
        raise ValueError("--init-adapter starts a new LoRA adapter: not with --full or --resume")
    if args.init_adapter != "none" and not os.path.exists(args.init_adapter):
        raise ValueError(f"no adapter at {args.init_adapter}: train the reader first (python train_lora.py --task "
                         f"rag-qa), or pass --init-adapter none to start from a fresh adapter")
    return args


def add_adapter(model, args) -> None:
    """Wrap the model's target layers in the LoRA adapter the flags describe."""
    add_lora(model, args.targets.split(","), r=args.r, alpha=args.alpha, dropout=args.lora_dropout, rslora=args.rslora)


def check_loaded_adapter(meta: dict, path: str, args) -> None:
    """--resume and --init-adapter train a saved adapter: refuse flags that describe another one, rather than
    ignore them."""
    saved = {"--r": meta["r"], "--alpha": meta["alpha"], "--rslora": meta["rslora"], "--lora-dropout": meta["dropout"]}
    given = {"--r": args.r, "--alpha": args.alpha, "--rslora": args.rslora, "--lora-dropout": args.lora_dropout}
    wrong = [flag for flag in saved if given[flag] != saved[flag]]
    if wrong:
        raise ValueError(f"{path} is an adapter with {wrong[0]} {saved[wrong[0]]}, not {given[wrong[0]]}: give the "
                         f"flags it was trained with")
    targets, names = args.targets.split(","), meta["targets"]
    if not (all(any(covers(n, t) for t in targets) for n in names) and all(any(covers(n, t) for n in names)
                                                                          for t in targets)):
        raise ValueError(f"{path} adapts other layers ({', '.join(names[:2])}, ...) than --targets {args.targets}: "
                         f"give the flags it was trained with")


def make_examples(args, world) -> tuple[list[list[tuple[str, str]]], dict]:
    """(training examples, each a list of (prompt, answer text) turns; held-out question sets to score)."""
    if args.data is not None:
        pairs = data.read_pairs(args.data)
        random.Random(0).shuffle(pairs)
        n_val = max(1, len(pairs) // 10)
        return [[(p["prompt"], answer_text(p["answer"]))] for p in pairs[n_val:]], {"heldout": pairs[:n_val]}
    qa = data.load_questions(args.world, *SPLITS)
    if args.task == "qa":
        return [[(qa_prompt(q["question"]), answer_text(q["answer"]))] for q in qa["train"]], qa
    if args.task == "agent":
        return agent_examples(world, args.examples, seed=args.seed), data.load_questions(args.world, *SPLITS, hops=2)
    return reading_examples(world, args.examples, seed=args.seed), qa


def main(argv=None):
    args = parse_args(argv)
    device, ddp = setup(args.device)
    dtype = pick_dtype(args.dtype, device)
    cfg = cli.config_from_args(TrainConfig, args)
    log = print if ddp.is_main else (lambda *a, **k: None)
    weights_name = "model.safetensors" if args.full else "adapter.safetensors"
    check_out_dir(args.out, weights_name, args.resume, args.overwrite, extra=("merged.safetensors",), ddp=ddp)
    model, tokenizer = cli.load_model(args.checkpoint, device)
    base_checkpoint = fingerprint(args.checkpoint)
    model.train()
    base_params = model.num_params()
    world = data.load_world(args.world) if args.data is None else None
    turns, heldout = make_examples(args, world)
    examples = [data.encode_example(tokenizer, t, model.config.block_size) for t in turns]
    n_val = max(1, len(examples) // 20)
    val, train_examples = examples[:n_val], examples[n_val:]

    os.makedirs(args.out, exist_ok=True)
    weights_path = os.path.join(args.out, weights_name)
    seed_everything(cfg.seed)
    if args.full and args.resume:  # train() restores the trained weights from the training state
        model, _ = cli.load_model(weights_path, device)
        model.train()
    elif args.resume or args.init_adapter != "none":
        path = weights_path if args.resume else args.init_adapter
        check_loaded_adapter(load_adapter(path, model), path, args)
        if not args.resume:
            log(f"starting from the adapter {path}")
    elif not args.full:
        add_adapter(model, args)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log(f"{args.task if args.data is None else args.data}: {len(train_examples):,} training examples, "
        f"{len(val)} for validation; training {trainable:,} of {base_params:,} parameters "
        f"({100 * trainable / base_params:.2f}%){'' if args.full else f' (LoRA r={args.r} on {args.targets})'}")

    def get_batch(split, step, micro):
        chosen = train_examples if split == "train" else val
        return data.get_example_batch(chosen, cfg.batch_size, tokenizer.eot_id, cfg.seed, step, micro,
                                      ddp.rank, ddp.world_size)

    def save_weights(step):
        if args.full:
            save_model(weights_path, model, tokenizer, step=step)
        else:
            save_adapter(weights_path, model, step=step, task=args.task)

    if args.data is None and args.task != "qa" and ddp.is_main:
        docs = data.load_documents(args.world)
        index, embedder = load_or_build_index(args.rag_out, docs, "tfidf", log=log)
        search = retriever(index, embedder, k=1)  # the agent's follow-ups: one document each fits the block

    def rag_accuracy(split):
        return eval_rag(model, tokenizer, index, embedder, heldout[split], k=2, log=log)

    def dev_check(step):
        """Exact match on a dev split, the way the skill is used: closed-book questions about the dev
        people (qa), retrieved biographies of the dev-new people (rag-qa), the dev-new people's two-hop
        questions through the agent loop (agent). Never test or new."""
        if step == 0 or args.data is not None:
            return None
        model.eval()
        if args.task == "qa":
            acc, what = qa_accuracy(model, tokenizer, heldout["dev"], lambda q: qa_prompt(q["question"])), "dev, closed book"
        elif args.task == "agent":
            r = evaluate_agent(model, tokenizer, search, heldout["dev-new"])
            acc = r["acc"]
            what = (f"dev-new two-hop questions, agent loop; {r['calls']:.2f} retrievals each; ended: "
                    + ", ".join(f"{why} {n}" for why, n in r["ended"].items()))
        else:
            r = rag_accuracy("dev-new")
            acc = r["acc"]
            what = "dev-new with retrieval; " + ", ".join(f"{a} {v:.2f}" for a, v in r["by_attribute"].items())
        model.train()
        log(f"  dev check: exact match {acc:.3f} (stop at {args.stop_acc}) on {what}")
        return f"dev exact match {acc:.3f} >= {args.stop_acc}" if acc >= args.stop_acc else None

    metrics = train(model, cfg, get_batch, args.out, device, dtype, save_weights, on_eval=dev_check,
                    resume=args.resume, ddp=ddp, log=log)
    if not ddp.is_main:
        return
    model.eval()
    acc, example = {}, {}  # example: the first question of a split with the answer given, for the report card
    if args.data is not None:
        acc["heldout"] = qa_accuracy(model, tokenizer, [{"question": p["prompt"], "answer": p["answer"]}
                                                         for p in heldout["heldout"]], lambda q: q["question"])
    elif args.task == "agent":
        metrics["agentic"] = {}
        for split in ("dev-new", "test", "new"):
            r = evaluate_agent(model, tokenizer, search, heldout[split], gap=split != "dev-new")
            r["closed_book"] = evaluate_agent(model, tokenizer, lambda query: [], heldout[split])["acc"]  # retrieval off
            acc[split] = r["acc"]
            metrics["agentic"][split] = r
            log(f"agentic {split}: exact match {r['acc']:.3f}, {r['calls']:.2f} retrievals each, both documents "
                f"found {r['recall_both']:.3f}, ended: " + ", ".join(f"{why} {n}" for why, n in r["ended"].items())
                + (f"; compositionality gap {r['gap']:.3f}" if "gap" in r else "") + f"; retrieval off {r['closed_book']:.3f}")
    else:
        for split in ("train", "dev", "test", "new"):  # closed book: no documents in the prompt
            r = eval_qa(model, tokenizer, heldout[split], lambda q: qa_prompt(q["question"]))
            acc[split], example[split] = r["acc"], r["example"]
        if args.task == "rag-qa":
            for split in ("dev-new", "test", "new"):
                r = rag_accuracy(split)
                acc[f"{split}_rag"], example[f"{split}_rag"] = r["acc"], r["example"]
            metrics["two_hop"] = two_hop_baselines(model, tokenizer, index, embedder, docs,
                                                   data.load_questions(args.world, "test", "new", hops=2))
            log("two-hop questions: " + "; ".join(f"{row} " + ", ".join(f"{s} {v:.3f}" for s, v in accs.items())
                                                  for row, accs in metrics["two_hop"].items()))
    metrics.update({"task": args.task, "full": args.full, "trainable_params": trainable, "total_params": base_params,
                    "trainable_pct": 100 * trainable / base_params, "acc": acc, "example": example,
                    "n": {split: len(questions) for split, questions in heldout.items()},
                    "adapter_bytes": os.path.getsize(weights_path), "base_bytes": os.path.getsize(args.checkpoint),
                    # the base it started from and what it trained, so its numbers are never read for other weights
                    "fingerprints": {"model": base_checkpoint,
                                     "finetuned" if args.full else "adapter": fingerprint(weights_path)}})
    if args.merge and not args.full:
        merge_lora(model)
        remove_lora(model)  # the merged weights stay; the model is a plain GPT again
        merged = os.path.join(args.out, "merged.safetensors")
        save_model(merged, model, tokenizer)
        log(f"wrote {shown(merged)}: the base with the adapter folded in; it loads like any checkpoint")
    write_json(os.path.join(args.out, "metrics.json"), metrics)
    log("exact match: " + ", ".join(f"{k} {v:.3f}" for k, v in acc.items()))
    log(f"wrote {shown(weights_path)} ({metrics['adapter_bytes']:,} bytes; the base is {metrics['base_bytes']:,}) "
        f"and {os.path.join(args.out, 'metrics.json')}")


if __name__ == "__main__":
    sys.exit(cli.run(main))

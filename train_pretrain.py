"""Level 4, pretraining: train a GPT from random weights on the tiny world (or on your own text).

    python train_pretrain.py                       # the tiny world, a CPU-sized model
    python train_pretrain.py --data my_text.txt    # your own text (a tokenizer is trained on it)
    python train_pretrain.py --resume              # continue an interrupted run exactly
    torchrun --nproc_per_node=2 train_pretrain.py  # data-parallel (DDP) on 2 processes

Writes model.safetensors (weights + config + tokenizer), train_state.safetensors (for --resume),
log.jsonl and metrics.json, whose cloze_acc says how many of the world's facts the model stored.
An --out that already holds a run is refused unless you say --resume or --overwrite.
"""

import argparse
import os
import sys

import torch
import torch.distributed as dist

from nanolevels import cli, data, provenance
from nanolevels.checkpoint import load_hf_gpt2, load_model, save_model
from nanolevels.device import pick_dtype, seed_everything
from nanolevels.evaluate import cloze_accuracy, eval_rag, report_row
from nanolevels.files import shown, write_json
from nanolevels.model import GPT, GPTConfig, download_gpt2
from nanolevels.prompting import prompt_ids
from nanolevels.retrieval import load_or_build_index
from nanolevels.tokenizer import Tokenizer
from nanolevels.train import TrainConfig, check_out_dir, setup, train
from nanolevels.world import ATTRIBUTES, SPLITS


def parse_args(argv):
    p = cli.ArgumentParser(description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=None,
                   help="a UTF-8 text file to pretrain on instead of the tiny world")
    p.add_argument("--world", default=cli.WORLD_DIR,
                   help="the prepared world's folder; prepared with defaults if missing (default: "
                        "data/world)")
    p.add_argument("--out", default=os.path.dirname(cli.MODEL),
                   help="output folder (default: out/pretrain)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the checkpoint in --out (with --data: on the text prepared "
                        "then)")
    p.add_argument("--overwrite", action="store_true",
                   help="start again in an --out that holds a run, deleting it (without --resume "
                        "or this, such an --out is refused)")
    p.add_argument("--init", default="scratch",
                   help="scratch: random weights; gpt2: download GPT-2 (124M) weights (needs the "
                        "internet; far too big for a CPU); or the path of a GPT-2 model folder or "
                        "model.safetensors you have (Hugging Face layout, e.g. from export.py), "
                        "with the tokenizer.json beside it, else GPT-2's tokenizer, which "
                        "tiktoken downloads once and keeps in its cache (TIKTOKEN_CACHE_DIR) "
                        "(default: scratch)")
    p.add_argument("--vocab-size", type=int, default=2048,
                   help="the largest BPE vocabulary trained for --data (default: 2048)")
    g = p.add_argument_group("model")
    g.add_argument("--n-layer", type=int, default=4, help="transformer blocks (default: 4)")
    g.add_argument("--n-head", type=int, default=4, help="attention heads per block (default: 4)")
    g.add_argument("--n-embd", type=int, default=128,
                   help="width of the residual stream (default: 128)")
    g.add_argument("--block-size", type=int, default=256,
                   help="context length in tokens (default: 256)")
    g.add_argument("--dropout", type=float, default=0.0, help="dropout probability (default: 0)")
    p.add_argument("--stop-cloze", type=float, default=0.97,
                   help="the tiny world: stop once the dev people's cloze accuracy reaches this, "
                        "checked at each evaluation (--max-steps is then the cap); above 1 turns "
                        "the check off (default: 0.97)")
    p.add_argument("--stop-reading", type=float, default=0.25,
                   help="the tiny world: and once the model answers this share of the dev-new "
                        "people's questions from their retrieved biographies (what the reading "
                        "pages teach; rag.py asks the same way) (default: 0.25)")
    # one flag per field of TrainConfig: --max-steps --batch-size --grad-accum --lr --min-lr
    # --warmup-steps --weight-decay --beta1 --beta2 --grad-clip --eval-interval --eval-batches
    # --log-interval --ckpt-interval --seed --compile
    cli.add_config_flags(p, TrainConfig, "training", max_steps=4000, eval_interval=250)
    cli.add_device_flags(p)  # --device --threads --dtype
    args = p.parse_args(argv)
    args.given = p.given(argv)  # --resume refuses a size flag that contradicts the saved run
    if not (args.init in ("scratch", "gpt2") or args.init.endswith(".safetensors")
            or os.path.isdir(args.init)):
        raise ValueError(f"--init takes scratch, gpt2, a GPT-2 model folder or a model.safetensors "
                         f"path, got {args.init!r}")
    if not args.stop_cloze > 0:  # NaN is not above 0 either
        raise ValueError(f"--stop-cloze must be above 0 (above 1 turns the dev check off), "
                         f"got {args.stop_cloze}")
    if not args.stop_reading >= 0:
        raise ValueError(f"--stop-reading must be 0 or more, got {args.stop_reading}")
    if os.path.isfile(args.world):
        raise ValueError(f"--world {args.world} is a file; give the folder of a prepared world")
    return args


def prepare_data(args, ddp, log) -> str:
    """The folder of token files to train on: the tiny world (prepared on first use), or the user's
    text prepared into <out>/data. Rank 0 writes it (and fetches GPT-2's files for --init); the
    others wait."""
    data_dir = args.world if args.data is None else os.path.join(args.out, "data")
    if ddp.is_main:
        if args.init == "gpt2" and not args.resume:  # once, here: the other ranks read them
            download_gpt2(os.path.join(args.out, "gpt2"))
            Tokenizer.gpt2()  # into tiktoken's cache
        prepared = os.path.exists(os.path.join(data_dir, "meta.json"))
        if args.data is not None and args.resume and prepared:
            log(f"resuming on the text prepared in {data_dir} (not re-reading {args.data})")
        elif args.data is not None:
            data.prepare_text(args.data, data_dir, args.vocab_size, log=log)
        elif not prepared:
            log(f"no world in {data_dir} yet: preparing it with the defaults")
            data.prepare_world(data_dir, log=log)
    if ddp.world_size > 1:
        dist.barrier()  # the other ranks wait until rank 0 has written the data and the weights
    return data_dir


def make_model(args, cfg, data_dir, model_path):
    """(model, tokenizer, train tokens, val tokens): the saved run's architecture for --resume
    (train() restores its weights), GPT-2's for --init, else a new GPT of the flags' size, seeded.
    """
    if args.resume:
        if not os.path.exists(model_path):
            raise FileNotFoundError(f"nothing to resume in {args.out}: no model.safetensors; "
                                    f"start a run there without --resume")
        model, tokenizer, _ = load_model(model_path)
        for key in ("n_layer", "n_head", "n_embd", "block_size", "dropout"):
            if key in args.given and getattr(args, key) != getattr(model.config, key):
                flag = "--" + key.replace("_", "-")
                raise ValueError(f"{flag} {getattr(args, key)} contradicts the run in {args.out} "
                                 f"({key} {getattr(model.config, key)}); resume without it, or "
                                 f"start again with --overwrite")
    elif args.init != "scratch":
        init = download_gpt2(os.path.join(args.out, "gpt2")) if args.init == "gpt2" else args.init
        model, tokenizer = load_hf_gpt2(init)  # the weights first, then tokenizer.json or GPT-2's
    else:
        tokenizer = None  # the data folder's own
    tokenizer, train_tokens, val_tokens = data.load_pretraining_data(data_dir, tokenizer)
    if not args.resume and args.init == "scratch":
        seed_everything(cfg.seed)  # the same initial weights for the same seed
        model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=args.block_size,
                              n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd,
                              dropout=args.dropout))
    return model, tokenizer, train_tokens, val_tokens


def dev_check(model, tokenizer, world, data_dir, args, log):
    """on_eval(step) for train(): a sample, and on the tiny world the dev checks. Stored facts and
    reading (from the reading pages) arrive late, each at a pace that varies by machine, so training
    stops on both skills, checked on dev splits, not on a step count."""
    device = next(model.parameters()).device
    dev_new = None if world is None else data.load_questions(data_dir, "dev-new")["dev-new"]
    index = []  # the retrieval index, built the first time the reading check runs

    def reading() -> float:
        """Exact match on the dev-new people's questions with the top-2 retrieved biographies in the
        prompt, as rag.py asks."""
        if not index:
            docs = data.load_documents(data_dir)
            index.extend(load_or_build_index(args.out, docs, "tfidf", log=log))
        return eval_rag(model, tokenizer, *index, dev_new, k=2, log=lambda *a: None)["acc"]

    def on_eval(step) -> dict:
        """What the dev checks measured, with "stop" (the reason) once both skills are there."""
        prompt = "" if world is None else f"{world.split('dev')[0].name} was born in"
        model.eval()
        ids = torch.tensor([prompt_ids(tokenizer, prompt)], device=device)
        out = model.generate(ids, 40, temperature=0, stop_tokens=(tokenizer.eot_id,))
        log(f"  sample: {tokenizer.decode(out[0, 1:].tolist())!r}")
        if world is None or step == 0:
            model.train()
            return {}
        dev = cloze_accuracy(model, tokenizer, world.split("dev"))
        log(f"  dev check: cloze accuracy of the dev people {dev:.3f} (stop at {args.stop_cloze})")
        read = reading() if dev >= args.stop_cloze else None  # only then: it takes longer
        model.train()
        if read is None:
            return {"dev_cloze": dev}
        log(f"  dev check: the dev-new people's questions answered from retrieved biographies "
            f"{read:.3f} (stop at {args.stop_reading})")
        checked = {"dev_cloze": dev, "dev_reading": read}
        if read >= args.stop_reading:
            checked["stop"] = (f"dev cloze {dev:.3f} >= {args.stop_cloze} and dev-new reading "
                               f"{read:.3f} >= {args.stop_reading}")
        return checked
    return on_eval


def main(argv=None):
    args = parse_args(argv)
    device, ddp = setup(args.device)
    dtype = pick_dtype(args.dtype, device)
    cfg = cli.config_from_args(TrainConfig, args)
    replaces = check_out_dir(args.out, "model.safetensors", args.resume, args.overwrite, ddp=ddp)
    os.makedirs(args.out, exist_ok=True)
    log = print if ddp.is_main else (lambda *a, **k: None)
    data_dir = prepare_data(args, ddp, log)
    model_path = os.path.join(args.out, "model.safetensors")
    model, tokenizer, train_tokens, val_tokens = make_model(args, cfg, data_dir, model_path)
    data_fingerprint = provenance.files(data_dir)
    log(f"model: {model.num_params():,} parameters ({model.config}); data: {len(train_tokens):,} "
        f"train / {len(val_tokens):,} val tokens; device {device}, {dtype}, "
        f"{ddp.world_size} process(es)")

    def get_batch(split, step, micro):
        tokens = train_tokens if split == "train" else val_tokens
        return data.get_lm_batch(tokens, cfg.batch_size, model.config.block_size, cfg.seed, step,
                                 micro, ddp.rank, ddp.world_size)

    world = data.load_world(data_dir) if args.data is None else None
    metrics = train(model, cfg, get_batch, args.out, device, dtype,
                    lambda step: save_model(model_path, model, tokenizer, step=step),
                    dev_check(model, tokenizer, world, data_dir, args, log), args.resume, ddp, log,
                    replaces)
    if not ddp.is_main:
        return
    # what this run trained on and produced, so that its numbers are never read for another model's
    metrics = {"params": model.num_params(), **metrics,
               "fingerprints": {"data": data_fingerprint,
                                "model": provenance.checkpoint(model_path)}}
    if world is not None:
        model.eval()
        cloze = {s: cloze_accuracy(model, tokenizer, world.split(s)) for s in SPLITS}
        n = {s: len(world.split(s)) * len(ATTRIBUTES) for s in ("test", "new")}
        metrics |= {"cloze_acc": cloze, "report": {"base_params": model.num_params()},
                    "rows": [report_row("pretrain-cloze", 4, "cloze", cloze, n, model.num_params(),
                                        metrics["fingerprints"])]}
    write_json(os.path.join(args.out, "metrics.json"), metrics)
    log(f"done: {metrics['steps']} steps in {metrics['wall_s']:.0f}s, "
        f"val loss {metrics['val_loss']:.4f}"
        + (f", cloze accuracy {metrics['cloze_acc']}" if world is not None else ""))
    log(f"wrote {shown(model_path)} and {shown(os.path.join(args.out, 'metrics.json'))}")


if __name__ == "__main__":
    sys.exit(cli.run(main))

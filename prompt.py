"""Level 1, prompting: the weights stay fixed; what goes into the context is the program.

    python prompt.py "Liesl Sage Keswick was born in"   # continue a text
    python prompt.py --interactive       # a prompt loop that streams tokens (Ctrl-D quits)
    python prompt.py --eval              # question prompts vs a compiled prompt program
    python prompt.py --ask "What is the birth city of Liesl Sage Keswick?"   # the program's answer

--eval compiles the program on the dev people (nanolevels/program.py) and writes
out/prompt/program.json and out/prompt/metrics.json; --ask runs that program. The QA layout is in
nanolevels/prompting.py.
"""

import argparse
import codecs
import os
import sys

import torch

from nanolevels import cli, data, provenance
from nanolevels.device import pick_device, seed_everything
from nanolevels.evaluate import complete, report_row
from nanolevels.files import shown, write_json
from nanolevels.lora import load_adapted
from nanolevels.model import check_sampling
from nanolevels.program import (describe, eval_program, eval_prompting, load_program,
                                parse_question, prompt_text, run_program)
from nanolevels.prompting import prompt_ids, qa_prompt


def parse_args(argv):
    p = cli.ArgumentParser(description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("prompt", nargs="?", help="the text to continue")
    p.add_argument("--interactive", action="store_true",
                   help="read prompts from the terminal, stream the answers")
    p.add_argument("--eval", action="store_true",
                   help="score question prompts and the compiled prompt program on the held-out "
                        "questions")
    p.add_argument("--ask", default=None, metavar="QUESTION",
                   help="answer a question about a person of the world with the compiled program, "
                        "e.g. \"Where was Liesl Sage Keswick born?\"")
    p.add_argument("--raw", action="store_true",
                   help="with --ask: a plain greedy completion of the question instead")
    p.add_argument("--verbose", action="store_true",
                   help="with --ask: print the prompt(s) the program ran")
    p.add_argument("--checkpoint", default=cli.MODEL, help=f"the model (default: {cli.MODEL})")
    p.add_argument("--adapter", default=None,
                   help="a LoRA adapter to load onto the model (from train_lora.py)")
    p.add_argument("--max-new-tokens", type=int, default=100,
                   help="tokens to generate (default: 100)")
    p.add_argument("--temperature", type=float, default=0.8,
                   help="sampling temperature; 0 means greedy (default: 0.8)")
    p.add_argument("--top-k", type=int, default=None,
                   help="sample only from the k most likely tokens")
    p.add_argument("--top-p", type=float, default=None,
                   help="sample from the smallest set of tokens whose probability reaches p, in "
                        "(0, 1]")
    p.add_argument("--seed", type=int, default=1337, help="sampling seed (default: 1337)")
    p.add_argument("--world", default=cli.WORLD_DIR,
                   help="the prepared world, for --eval and --ask (default: data/world)")
    p.add_argument("--out", default="out/prompt",
                   help="where --eval writes metrics.json and program.json, and --ask reads "
                        "program.json (default: out/prompt)")
    cli.add_device_flags(p, dtype=False)  # --device --threads
    args = p.parse_args(argv)
    check_sampling(args.temperature, args.top_k, args.top_p,
                   names=("--temperature", "--top-k", "--top-p"))
    if args.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    if not (args.prompt is not None or args.interactive or args.eval or args.ask is not None):
        raise ValueError('give a prompt to continue (python prompt.py "Once upon"), --interactive, '
                         '--eval or --ask')
    if (args.raw or args.verbose) and args.ask is None:
        raise ValueError("--raw and --verbose go with --ask \"<question>\"")
    return args


def stream(model, tokenizer, text: str, args, warned: list) -> None:
    """Print the continuation of text token by token, as it is generated (with the KV cache)."""
    if not text.strip():
        raise ValueError("the prompt is empty; type some text to continue")
    ids = prompt_ids(tokenizer, text)
    block = model.config.block_size
    if len(ids) > block and not warned:
        print(f"note: the prompt is {len(ids)} tokens; the model sees only the last {block}",
              file=sys.stderr)
        warned.append(True)
    idx = torch.tensor([ids], device=next(model.parameters()).device)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")  # a character may span tokens
    print(text, end="", flush=True)
    for token in model.generate_stream(idx, args.max_new_tokens, args.temperature, args.top_k,
                                       args.top_p, stop_tokens=(tokenizer.eot_id,)):
        if token != tokenizer.eot_id:
            print(decoder.decode(tokenizer.decode_bytes([token])), end="", flush=True)
    print(decoder.decode(b"", final=True))


def evaluate(model, tokenizer, args) -> None:
    """The table: question prompts and the compiled program, each with its dev score, on test and
    new."""
    # the model (and adapter) these numbers are of
    scored = provenance.current({"model": args.checkpoint, "adapter": args.adapter})
    qa = data.load_questions(args.world, "train", "dev", "test", "new")
    heldout = {"test": qa["test"], "new": qa["new"]}
    result = eval_prompting(model, tokenizer, qa["train"], qa["dev"], heldout, seed=args.seed)
    with open(os.path.join(args.world, "pretrain.txt"), encoding="utf-8") as f:
        corpus = f.read()
    row, examples, program = eval_program(model, tokenizer, corpus, qa["train"], qa["dev"], heldout,
                                          seed=args.seed)
    result["acc"]["prompt-program"], result["example"]["prompt-program"] = row, examples
    result["program"] = {a: {"template": e["prompts"][0]["template"],
                             "demos": len(e["prompts"][0]["demos"]), "templates": len(e["prompts"]),
                             "ranked": bool(e["values"]), "dev": e["dev"]}
                         for a, e in program["attributes"].items()}
    n = {split: len(questions) for split, questions in heldout.items()}
    methods = {"zero-shot": "zero-shot", "k-shot": "3-shot", "searched-demos": "searched-demos",
               "prompt-program": "prompt-program"}  # report row: result's key
    rows = [report_row(method, 1, "one-hop", result["acc"][key], n, 0, scored,
                       {s: result["example"][key][s] for s in ("test", "new")})
            for method, key in methods.items()]
    report = {"program": result["program"], "prompt_k": 3}
    metrics = os.path.join(args.out, "metrics.json")
    program_path = os.path.join(args.out, "program.json")
    write_json(program_path, program)
    write_json(metrics, {**result, "fingerprints": scored, "rows": rows, "report": report})
    print(f"wrote {shown(metrics)} and {shown(program_path)}")


def ask(model, tokenizer, args) -> None:
    """Print the answer to args.ask: from the compiled program, or a plain completion with --raw."""
    if args.raw:
        prompt = qa_prompt(args.ask.strip())
        if args.verbose:
            print(f"prompt: {prompt!r}")
        print(complete(model, tokenizer, [prompt])[0].strip())
        return
    recompile = " ".join(["python prompt.py --eval --checkpoint", args.checkpoint, "--world",
                          args.world, "--out", args.out]
                         + (["--adapter", args.adapter] if args.adapter else []))
    people = [p.name for p in data.load_world(args.world).people]
    person, attribute = parse_question(args.ask, people)
    program = load_program(os.path.join(args.out, "program.json"), model, tokenizer, recompile)
    if attribute not in program["attributes"]:
        raise ValueError(f"the program has no prompt for {attribute}; recompile it with: "
                         f"{recompile}")
    entry = program["attributes"][attribute]
    if args.verbose:
        print(f"{attribute} of {person}: {describe(entry)}")
        for p in entry["prompts"]:
            print(f"prompt: {prompt_text(p, person)!r}")
    [answer] = run_program(model, tokenizer, program, [{"person": person, "attribute": attribute}])
    print(answer.strip())


def main(argv=None):
    args = parse_args(argv)
    device = pick_device(args.device)
    model, tokenizer = load_adapted(args.checkpoint, args.adapter, device)
    seed_everything(args.seed)
    if args.eval:
        evaluate(model, tokenizer, args)
    if args.ask is not None:
        ask(model, tokenizer, args)
    warned = []
    if args.prompt is not None:
        stream(model, tokenizer, args.prompt, args, warned)
    if args.interactive:
        while True:
            try:
                text = input("> ")
            except EOFError:
                print()
                return
            if text.strip():
                stream(model, tokenizer, text, args, warned)


if __name__ == "__main__":
    sys.exit(cli.run(main))

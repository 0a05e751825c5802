"""Level 1, prompting: the weights stay fixed; what goes into the context is the program.

    python prompt.py "Ada Jo Crane was born in"   # continue a text
    python prompt.py --interactive                # a prompt loop that streams tokens (Ctrl-D quits)
    python prompt.py --eval                       # zero-shot vs k-shot vs searched demos on held-out questions

--eval writes out/prompt/metrics.json. The QA layout is in nanolevels/prompting.py.
"""

import argparse
import codecs
import os
import sys

import torch

from nanolevels import cli, data
from nanolevels.device import pick_device, seed_everything
from nanolevels.evaluate import eval_prompting
from nanolevels.files import write_json



def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("prompt", nargs="?", help="the text to continue")
    p.add_argument("--interactive", action="store_true", help="read prompts from the terminal, stream the answers")
    p.add_argument("--eval", action="store_true", help="score prompting strategies on the held-out test questions")
    p.add_argument("--checkpoint", default="out/pretrain/model.safetensors",
                   help="the model (default: out/pretrain/model.safetensors)")
    p.add_argument("--adapter", default=None, help="a LoRA adapter to load onto the model (from train_lora.py)")
    p.add_argument("--max-new-tokens", type=int, default=100, help="tokens to generate (default: 100)")
    p.add_argument("--temperature", type=float, default=0.8,
                   help="sampling temperature; 0 or less means greedy (default: 0.8)")
    p.add_argument("--top-k", type=int, default=None, help="sample only from the k most likely tokens")
    p.add_argument("--top-p", type=float, default=None,
                   help="sample from the smallest set of tokens whose probability reaches p, in (0, 1]")
    p.add_argument("--seed", type=int, default=1337, help="sampling seed (default: 1337)")
    p.add_argument("--world", default=data.WORLD_DIR, help="the prepared world, for --eval (default: data/world)")
    p.add_argument("--out", default="out/prompt", help="where --eval writes metrics.json (default: out/prompt)")
    cli.add_device_flags(p, dtype=False)
    args = p.parse_args(argv)
    if args.top_p is not None and not 0 < args.top_p <= 1:
        raise ValueError(f"--top-p must be in (0, 1], got {args.top_p}")
    if args.top_k is not None and args.top_k < 1:
        raise ValueError(f"--top-k must be at least 1, got {args.top_k}")
    if not (args.prompt is not None or args.interactive or args.eval):
        raise ValueError('give a prompt to continue (python prompt.py "Once upon"), --interactive or --eval')
    return args


def stream(model, tokenizer, text: str, args, warned: list) -> None:
    """Print the continuation of text token by token, as it is generated (with the KV cache)."""
    if not text.strip():
        raise ValueError("the prompt is empty; type some text to continue")
    ids = [tokenizer.eot_id] + tokenizer.encode(text)
    block = model.config.block_size
    if len(ids) > block and not warned:
        print(f"note: the prompt is {len(ids)} tokens; the model sees only the last {block}", file=sys.stderr)
        warned.append(True)
    idx = torch.tensor([ids], device=next(model.parameters()).device)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")  # a character may span tokens
    print(text, end="", flush=True)
    for token in model.generate_stream(idx, args.max_new_tokens, args.temperature, args.top_k, args.top_p,
                                       stop_tokens=(tokenizer.eot_id,)):
        if token != tokenizer.eot_id:
            print(decoder.decode(tokenizer.decode_bytes([token])), end="", flush=True)
    print(decoder.decode(b"", final=True))


def main(argv=None):
    args = parse_args(argv)
    device = pick_device(args.device)
    model, tokenizer = cli.load_model(args.checkpoint, device, args.adapter)
    seed_everything(args.seed)
    if args.eval:
        qa = data.load_questions(args.world, "train", "dev", "test", "new")
        result = eval_prompting(model, tokenizer, qa["train"], qa["dev"], {"test": qa["test"], "new": qa["new"]},
                                seed=args.seed)
        write_json(os.path.join(args.out, "metrics.json"), result)
        print(f"wrote {os.path.join(args.out, 'metrics.json')}")
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

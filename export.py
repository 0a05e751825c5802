"""Take it elsewhere: a nanolevels model written as a Hugging Face GPT-2 folder, for transformers.

    python export.py                                   # out/pretrain/model.safetensors -> out/hf
    python export.py --adapter out/lora/rag-qa/adapter.safetensors --out out/hf-rag-qa
    python export.py --adapter out/lora/rag-qa/adapter.safetensors --peft --out out/hf-rag-qa-peft

The folder holds config.json, model.safetensors (GPT-2's names, Conv1D weights transposed) and
tokenizer.json (our BPE, which splits with our pattern, not GPT-2's). --adapter merges a LoRA
adapter into the weights; with --peft the base model goes out and the adapter beside it, in peft's
layout (<out>/adapter). The export is read back with from_hf_gpt2 and checked before it is called
done: the same logits (fp32) and the same greedy tokens.
"""

import argparse
import os
import sys

import torch

from nanolevels import cli
from nanolevels.checkpoint import load_hf_gpt2, save_hf_gpt2
from nanolevels.files import shown
from nanolevels.lora import load_adapted, merge_lora, remove_lora, save_peft_adapter
from nanolevels.prompting import prompt_ids

# what an export folder holds (save_hf_gpt2's files, save_peft_adapter's folder)
EXPORT_FILES = {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                "adapter"}
TOLERANCE = 1e-5  # max |logit diff| of the export read back: fp32 through the same kernels


def parse_args(argv):
    p = cli.ArgumentParser(description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=cli.MODEL,
                   help=f"the nanolevels model to export (default: {cli.MODEL})")
    p.add_argument("--adapter", default=None,
                   help="a LoRA adapter of that model, merged into the exported weights")
    p.add_argument("--peft", action="store_true",
                   help="write the adapter apart in peft's layout (<out>/adapter) beside the base "
                        "model, instead of merging it")
    p.add_argument("--out", default="out/hf", help="the folder to write (default: out/hf)")
    p.add_argument("--prompt", default="The birthplace of",
                   help="the text the check reads back and continues (default: 'The birthplace "
                        "of')")
    args = p.parse_args(argv)
    if args.peft and args.adapter is None:
        raise ValueError("--peft writes an adapter: give it with --adapter")
    # an export overwrites an earlier export's files only: never a run's model.safetensors
    names = set(os.listdir(args.out)) if os.path.isdir(args.out) else set()
    if names and ("config.json" not in names or names - EXPORT_FILES):
        raise ValueError(f"--out {args.out} holds files that are not an export "
                         f"({', '.join(sorted(names - {'config.json'})[:3])}); export into a new "
                         "folder or an earlier export's")
    return args


def main(argv=None):
    args = parse_args(argv)
    model, tokenizer = load_adapted(args.checkpoint, args.adapter)
    written = []
    if args.peft:
        written = save_peft_adapter(os.path.join(args.out, "adapter"), model)
        remove_lora(model)  # the base model's weights go out; the adapter is in its own folder
    ids = torch.tensor([prompt_ids(tokenizer, args.prompt)])
    with torch.no_grad():
        greedy = model.generate(ids, 32, temperature=0)  # (1, T + 32)
        window = greedy[:, -model.config.block_size:]  # what fits in one forward
        adapted = model(window, targets=window)[0]  # (1, T', V): logits at every position
        merge_lora(model)  # B @ A into the weights, then plain nn.Linear layers (GPT-2's names)
        remove_lora(model)
        expected = model(window, targets=window)[0]  # what the exported weights compute
    written = save_hf_gpt2(args.out, model, tokenizer) + written
    print(f"exported {shown(args.checkpoint)}"
          + (f" with {shown(args.adapter)} {'apart' if args.peft else 'merged'}" if args.adapter
             else "")
          + f" ({model.num_params():,} parameters) to {shown(args.out)}: "
          + ", ".join(os.path.relpath(path, args.out) for path in written))

    # the check: the folder read back the way any GPT-2 folder is read
    back, back_tokenizer = load_hf_gpt2(args.out)
    back.eval()
    with torch.no_grad():
        diff = (back(window, targets=window)[0] - expected).abs().max().item()
        same = torch.equal(back.generate(ids, 32, temperature=0), greedy)
    same_tokenizer = back_tokenizer.to_dict() == tokenizer.to_dict()
    print(f"read back with from_hf_gpt2: max |logit diff| {diff:.2e} (fp32, {window.size(1)} "
          f"positions x {expected.size(-1)} tokens); the {greedy.size(1) - ids.size(1)} greedy "
          f"tokens after {args.prompt!r} equal: {same}")
    if args.adapter and not args.peft:
        print(f"merging changed the logits by {(expected - adapted).abs().max().item():.2e} at "
              "most: fp32 rounds W0 + scale * B @ A otherwise than B(A(x)) added apart")
    print(f"tokenizer.json read back: the same {len(tokenizer.merges)} merges and "
          f"{len(tokenizer.special_tokens)} special token(s): {same_tokenizer}")
    if diff > TOLERANCE or not same or not same_tokenizer:
        print(f"error: the export does not compute what {shown(args.checkpoint)} does",
              file=sys.stderr)
        return 1
    out = shown(args.out)
    print("load it with transformers:\n"
          "    from transformers import AutoTokenizer, GPT2LMHeadModel\n"
          f"    model = GPT2LMHeadModel.from_pretrained({out!r})\n"
          f"    tokenizer = AutoTokenizer.from_pretrained({out!r})")
    if args.peft:
        print("    from peft import PeftModel\n"
              f"    model = PeftModel.from_pretrained(model, {os.path.join(out, 'adapter')!r})")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))

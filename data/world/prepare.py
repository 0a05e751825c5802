"""Write the tiny world's files: people, biographies, questions, tokenizer and token streams.

    python data/world/prepare.py                   # the default world, into data/world/
    python data/world/prepare.py --people 2000     # a bigger world (20 s, 250 MB, 200 MB on disk)
    python data/world/prepare.py --people 100000   # ~11 min, 0.8 GB of memory, 10 GB on disk

See nanolevels/world.py for what the world is and nanolevels/data.py for the files written; they
are written as they are made, so memory hardly grows with the world (bench/bench_scale.py).
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
from nanolevels import cli, data  # noqa: E402
from nanolevels.files import shown  # noqa: E402


def main(argv=None):
    p = cli.ArgumentParser(description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)),
                   help="output folder (default: data/world, next to this script)")
    p.add_argument("--people", type=int, default=340,
                   help="people in the world, split 32%% train / 12%% dev / 22%% test / 12%% "
                        "dev-new / 22%% new (see nanolevels/world.py) (default: 340)")
    p.add_argument("--bios-per-person", type=int, default=5,
                   help="biographies per person, each a fresh paraphrase (default: 5)")
    p.add_argument("--epochs", type=int, default=40,
                   help="how often each biography is written into the pretraining text (default: "
                        "40)")
    p.add_argument("--reading-share", type=float, default=0.2,
                   help="share of pretraining documents that are reading pages, each about a "
                        "different fresh person: a biography then its six questions answered "
                        "(default: 0.2)")
    p.add_argument("--mix-qa", action="store_true",
                   help="also put the QA pairs of train people into the pretraining text")
    p.add_argument("--vocab-size", type=int, default=2048,
                   help="largest BPE vocabulary: 256 bytes + merges + <|endoftext|>; training "
                        "stops early when no pair repeats (the default world stops at ~1750) "
                        "(default: 2048)")
    p.add_argument("--seed", type=int, default=1337, help="the world's random seed (default: 1337)")
    args = p.parse_args(argv)
    data.prepare_world(args.out, args.people, args.bios_per_person, args.epochs, args.reading_share,
                       args.mix_qa, args.vocab_size, args.seed)
    print(f"wrote {shown(args.out)}")


if __name__ == "__main__":
    sys.exit(cli.run(main))

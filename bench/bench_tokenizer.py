"""Benchmark the tokenizer: BPE training time, bytes per token, tiktoken vs pure-Python encode speed.

    python bench/bench_tokenizer.py                  # the default world's documents (what prepare.py trains on)
    python bench/bench_tokenizer.py --quick          # their first 300k characters, a few seconds
    python bench/bench_tokenizer.py --corpus my.txt --vocab-size 2048
"""

import argparse
import os
import sys
import time
import timeit

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)  # so `python bench/bench_tokenizer.py` works without installing the package

from nanolevels.tokenizer import Tokenizer  # noqa: E402
from nanolevels.corpus import make_corpus  # noqa: E402
from nanolevels.world import make_world  # noqa: E402

def world_text() -> str:
    """What data/world/prepare.py trains the tokenizer on: the default world's distinct documents."""
    corpus = make_corpus(make_world())
    return "\n".join(dict.fromkeys(corpus.train_docs))


def run(quick=False, corpus=None, vocab_size=2048):
    """Train on the corpus and time encoding; returns the figures as a dict."""
    if corpus:
        with open(corpus, encoding="utf-8") as f:
            text = f.read()
    else:
        text = world_text()
    if quick:
        text = text[:300_000]

    t0 = time.perf_counter()
    tok = Tokenizer.train(text, vocab_size)
    train_s = time.perf_counter() - t0
    ids = tok.encode(text, allowed_special="all")

    # speed on the same sample for both; the pure-Python one is slow, so keep the sample small
    sample = text[: 50_000 if quick else 200_000]
    sample_mb = len(sample.encode("utf-8")) / 1e6
    # tiktoken takes milliseconds here, so take the best of a few runs to get past the noise
    tiktoken_s = min(timeit.repeat(lambda: tok.encode(sample, allowed_special="all"), number=1, repeat=5))
    t0 = time.perf_counter()
    slow = tok.encode_reference(sample, allowed_special="all")
    reference_s = time.perf_counter() - t0

    return {
        "corpus": corpus or "the default world (distinct documents)",
        "corpus_mb": len(text.encode("utf-8")) / 1e6,
        "vocab_size": tok.vocab_size,
        "num_merges": len(tok.merges),
        "train_s": train_s,
        "bytes_per_token": len(text.encode("utf-8")) / len(ids),
        "tiktoken_mb_s": sample_mb / tiktoken_s,
        "reference_mb_s": sample_mb / reference_s,
        "speedup": reference_s / tiktoken_s,
        "same_ids": tok.encode(sample, allowed_special="all") == slow,
    }


def report(r):
    print(f"corpus: {r['corpus']} ({r['corpus_mb']:.2f} MB)")
    print(f"train:  {r['num_merges']} merges (vocab {r['vocab_size']}) in {r['train_s']:.2f} s")
    print(f"bytes per token: {r['bytes_per_token']:.2f}")
    print(f"encode: tiktoken {r['tiktoken_mb_s']:.2f} MB/s, encode_reference {r['reference_mb_s']:.3f} MB/s "
          f"({r['speedup']:.0f}x), same ids: {r['same_ids']}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", help="text file to train on (default: the default world's documents)")
    parser.add_argument("--vocab-size", type=int, default=2048, help="256 bytes + merges + special tokens")
    parser.add_argument("--quick", action="store_true", help="the first 300k characters of the corpus only")
    args = parser.parse_args()
    report(run(args.quick, args.corpus, args.vocab_size))

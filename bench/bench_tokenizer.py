"""Benchmark the tokenizer: BPE training time, bytes per token, tiktoken vs pure-Python encode speed.

    python bench/bench_tokenizer.py                  # data/world/pretrain.txt if it exists, else ~2 MB synthetic
    python bench/bench_tokenizer.py --quick          # ~300 kB, a few seconds
    python bench/bench_tokenizer.py --corpus my.txt --vocab-size 2048
"""

import argparse
import os
import random
import sys
import time
import timeit

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)  # so `python bench/bench_tokenizer.py` works without installing the package

from nanolevels.tokenizer import EOT, Tokenizer  # noqa: E402

DEFAULT_CORPUS = os.path.join(REPO, "data", "world", "pretrain.txt")


def synthetic_biographies(num_bytes, seed=0):
    """Repetitive English like the world's pretraining text: short biographies of made-up people."""
    rng = random.Random(seed)
    syllables = ["an", "bel", "cor", "da", "el", "fin", "gar", "ho", "is", "jun", "ka", "lo", "mar", "ne",
                 "or", "pe", "quin", "ra", "sol", "tor", "u", "val", "wen", "xi", "yor", "zed"]

    def word(n):  # a made-up name of n syllables, e.g. "Belkamar"
        return "".join(rng.choice(syllables) for _ in range(n)).capitalize()

    people = [f"{word(2)} {word(rng.randint(2, 3))}" for _ in range(3000)]
    cities = [word(rng.randint(2, 3)) for _ in range(300)]
    jobs = ["baker", "engineer", "violinist", "botanist", "nurse", "carpenter", "teacher", "cartographer",
            "glassblower", "astronomer", "librarian", "ferry captain", "beekeeper", "surgeon", "potter"]
    months = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
              "October", "November", "December"]
    docs, size = [], 0
    while size < num_bytes:
        name, friend = rng.choice(people), rng.choice(people)
        first, born = name.split()[0], rng.randint(1800, 2000)
        doc = (f"{name} was born on {rng.choice(months)} {rng.randint(1, 28)}, {born}, in {rng.choice(cities)}. "
               f"{first} worked as a {rng.choice(jobs)} in {rng.choice(cities)} for {rng.randint(2, 40)} years. "
               f"In {born + rng.randint(18, 60)}, {first} moved to {rng.choice(cities)}, where {first} met {friend}. "
               f"{first}'s favourite number was {rng.randint(0, 10_000)}.")
        docs.append(doc)
        size += len(doc) + len(EOT)
    return EOT.join(docs)


def run(quick=False, corpus=None, vocab_size=1024):
    """Train on the corpus and time encoding; returns the figures as a dict."""
    corpus = corpus or (DEFAULT_CORPUS if os.path.exists(DEFAULT_CORPUS) else None)
    limit = 300_000 if quick else None
    if corpus:
        with open(corpus, encoding="utf-8") as f:
            text = f.read(limit) if limit else f.read()
    else:
        text = synthetic_biographies(limit or 2_000_000)

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
        "corpus": corpus or "synthetic",
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


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", help="text file to train on (default: data/world/pretrain.txt, else synthetic)")
    parser.add_argument("--vocab-size", type=int, default=1024, help="256 bytes + merges + special tokens")
    parser.add_argument("--quick", action="store_true", help="~300 kB corpus instead of the whole file / 2 MB")
    args = parser.parse_args()
    r = run(args.quick, args.corpus, args.vocab_size)
    print(f"corpus: {r['corpus']} ({r['corpus_mb']:.2f} MB)")
    print(f"train:  {r['num_merges']} merges (vocab {r['vocab_size']}) in {r['train_s']:.2f} s")
    print(f"bytes per token: {r['bytes_per_token']:.2f}")
    print(f"encode: tiktoken {r['tiktoken_mb_s']:.2f} MB/s, encode_reference {r['reference_mb_s']:.3f} MB/s "
          f"({r['speedup']:.0f}x), same ids: {r['same_ids']}")

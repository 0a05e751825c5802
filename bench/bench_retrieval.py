"""Benchmark level 2's retrieval: exact top-5 search over 100,000 vectors, against the bare matrix product.

    python bench/bench_retrieval.py            # about half a minute on 2 CPU cores
    python bench/bench_retrieval.py --quick    # fewer repeats

An exact search has to read every stored number once, so the matrix product alone (queries @ E.T) is
its lower limit; the ratio search / bare shows what the top-k selection and the result lists cost on
top (goal: at most 1.5x). If the default world exists (`python data/world/prepare.py`), this also
prints TF-IDF recall@1 and recall@5 on the test and new questions.
"""

import argparse
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from nanolevels.files import read_jsonl  # noqa: E402
from nanolevels.retrieval import TfidfEmbedder, VectorIndex, retrieval_recall  # noqa: E402

N, DIM, K, BATCH = 100_000, 256, 5, 64
WORLD = os.path.join(ROOT, "data", "world")


def best_ms(fns: list, repeats: int) -> list[float]:
    """Fastest of `repeats` calls of each function, in milliseconds, after a warm-up call.

    The functions take turns within each repeat, so a busy moment of the machine slows all of them,
    not only the one that happened to run then.
    """
    best = [float("inf")] * len(fns)
    for r in range(repeats + 1):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            if r > 0:
                best[i] = min(best[i], time.perf_counter() - t0)
    return [b * 1000 for b in best]


def search_speed(repeats: int) -> dict:
    """Top-K search vs the bare product, for one query and for a batch, on N x DIM random unit vectors."""
    rng = np.random.default_rng(0)
    index = VectorIndex(DIM)
    index.add(rng.standard_normal((N, DIM), dtype=np.float32), [{"id": str(i), "text": ""} for i in range(N)])
    out = {}
    for name, queries in (("single", rng.standard_normal(DIM, dtype=np.float32)),
                          (f"batch{BATCH}", rng.standard_normal((BATCH, DIM), dtype=np.float32))):
        search, bare = best_ms([lambda: index.search(queries, K),
                                lambda: queries @ index.embeddings.T], repeats)
        out[name] = {"search_ms": search, "bare_ms": bare, "ratio": search / bare}
    return out


def world_recall() -> dict | None:
    """TF-IDF recall@1 and @5 on the default world's test and new questions; None if it is not prepared."""
    paths = {name: os.path.join(WORLD, f"{name}.jsonl") for name in ("docs", "qa_test", "qa_new")}
    if not all(os.path.exists(p) for p in paths.values()):
        return None
    docs = read_jsonl(paths["docs"])
    embedder = TfidfEmbedder().fit([d["text"] for d in docs])
    index = VectorIndex(embedder.dim, embedder.name)
    index.add(embedder.embed([d["text"] for d in docs]), docs)
    out = {"docs": len(docs)}
    for split in ("test", "new"):
        qa = read_jsonl(paths[f"qa_{split}"])
        out[split] = {"questions": len(qa), **retrieval_recall(index, embedder, qa, K)[1]}
    return out


def run(quick: bool = False) -> dict:
    return {"search": search_speed(repeats=5 if quick else 20), "recall": world_recall()}


def report(r: dict) -> None:
    print(f"exact top-{K} search over {N:,} x {DIM} float32 unit vectors (best of repeats):")
    for name, s in r["search"].items():
        print(f"  {name:8s} search {s['search_ms']:7.2f} ms, bare product {s['bare_ms']:7.2f} ms, "
              f"ratio {s['ratio']:.2f}x (goal <= 1.5x)")
    if r["recall"] is None:
        print("no default world in data/world: run `python data/world/prepare.py` for TF-IDF recall")
        return
    print(f"TF-IDF retrieval over the default world's {r['recall']['docs']} biographies:")
    for split in ("test", "new"):
        s = r["recall"][split]
        print(f"  {split:4s} ({s['questions']} questions): recall@1 {100 * s['recall@1']:.1f}%, "
              f"recall@5 {100 * s['recall@5']:.1f}%")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer repeats")
    report(run(p.parse_args().quick))

"""Level 2, RAG: the weights never change, yet the model answers questions about people it never
saw, because retrieval puts the right biography into its prompt.

    python rag.py "What is the birth city of <name>?"   # show the retrieved documents and the answer
    python rag.py --eval                                  # recall and exact match on test and new people
    python rag.py --eval --adapter out/lora/rag-qa/adapter.safetensors   # with the level-3 reader

The index of every biography (new people included) is built on first use and cached in out/rag/.
--eval writes out/rag/metrics.json.
"""

import argparse
import os
import random
import sys
import time

from nanolevels import cli, data
from nanolevels.device import pick_device
from nanolevels.evaluate import ANSWER_TOKENS, complete, eval_rag
from nanolevels.files import read_jsonl, write_json
from nanolevels.prompting import rag_prompt
from nanolevels.retrieval import load_or_build_index, retrieval_recall

EMBEDDERS = ("tfidf", "gpt")


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("question", nargs="?", help="a question to answer from the documents")
    p.add_argument("--eval", action="store_true", help="score retrieval and answers on the test and new questions")
    p.add_argument("--checkpoint", default="out/pretrain/model.safetensors",
                   help="the model (default: out/pretrain/model.safetensors)")
    p.add_argument("--adapter", default=None, help="a LoRA adapter to load onto the model (from train_lora.py)")
    p.add_argument("--embedder", default="tfidf", choices=EMBEDDERS,
                   help="tfidf: hashed TF-IDF bag of words; gpt: the model's mean hidden state (default: tfidf)")
    p.add_argument("--k", type=int, default=2, help="documents retrieved per question (default: 2)")
    p.add_argument("--demos", type=int, default=0,
                   help="few-shot demonstrations (QA pairs of train people) between documents and question (default: 0)")
    p.add_argument("--world", default=data.WORLD_DIR, help="the prepared world (default: data/world)")
    p.add_argument("--out", default="out/rag", help="index cache and metrics.json (default: out/rag)")
    p.add_argument("--seed", type=int, default=0, help="which demonstrations are drawn (default: 0)")
    cli.add_device_flags(p, dtype=False)
    args = p.parse_args(argv)
    if args.k < 1:
        raise ValueError(f"--k must be at least 1, got {args.k}")
    if args.question is None and not args.eval:
        raise ValueError('ask a question (python rag.py "What is the birth city of ...?") or use --eval')
    if args.question is not None and not args.question.strip():
        raise ValueError("the question is empty; ask something about a person")
    return args


def main(argv=None):
    args = parse_args(argv)
    device = pick_device(args.device)
    model, tokenizer = cli.load_model(args.checkpoint, device, args.adapter)
    docs_path = os.path.join(args.world, "docs.jsonl")
    if not os.path.exists(docs_path):
        raise FileNotFoundError(f"no documents at {docs_path}; make them with: python data/world/prepare.py")
    docs = read_jsonl(docs_path)
    qa_train = read_jsonl(os.path.join(args.world, "qa_train.jsonl"))
    demos = random.Random(args.seed).sample(qa_train, min(args.demos, len(qa_train)))
    index, embedder = load_or_build_index(args.out, docs, args.embedder, model, tokenizer)
    budget = model.config.block_size - ANSWER_TOKENS

    if args.question is not None:
        hits = index.search(embedder.embed([args.question]), args.k)[0]
        for rank, (score, doc) in enumerate(hits, 1):
            print(f"[{rank}] {score:.3f}  {doc['text']}")
        prompt, dropped = rag_prompt(args.question, [doc["text"] for _, doc in hits], tokenizer, budget, demos)
        if dropped:
            print(f"note: {dropped} lowest-ranked document(s) dropped to fit the block", file=sys.stderr)
        print(f"answer: {complete(model, tokenizer, [prompt])[0].strip()}")

    if args.eval:
        metrics = {"k": args.k, "demos": args.demos, "embedder": args.embedder, "adapter": args.adapter,
                   "acc": {}, "by_attribute": {}, "retrieval": {}}
        questions = data.load_questions(args.world, "test", "new")
        for name in EMBEDDERS:  # the retrieval quality of every embedder; answers with the chosen one
            idx, emb = (index, embedder) if name == args.embedder else load_or_build_index(
                args.out, docs, name, model, tokenizer)
            metrics["retrieval"][name] = {}
            for split, qs in questions.items():
                if name == args.embedder:
                    r = eval_rag(model, tokenizer, idx, emb, qs, args.k, demos)
                    metrics["acc"][split] = r.pop("acc")
                    metrics["by_attribute"][split] = r.pop("by_attribute")
                else:
                    _, r = retrieval_recall(idx, emb, qs, args.k)
                metrics["retrieval"][name][split] = r
                answers = f", exact match {metrics['acc'][split]:.3f}" if name == args.embedder else ""
                print(f"{name:6s} {split:4s}: " + ", ".join(f"{m} {v:.3f}" for m, v in r.items()) + answers)
        # query latency: embed one question and search, averaged over up to 200 questions
        qs = [q["question"] for q in questions["new"]][:200]
        t0 = time.perf_counter()
        for q in qs:
            index.search(embedder.embed([q]), args.k)
        metrics["query_latency_ms"] = 1000 * (time.perf_counter() - t0) / len(qs)
        write_json(os.path.join(args.out, "metrics.json"), metrics)
        print(f"query latency {metrics['query_latency_ms']:.2f} ms ({args.embedder}); "
              f"wrote {os.path.join(args.out, 'metrics.json')}")


if __name__ == "__main__":
    sys.exit(cli.run(main))

"""Level 2, RAG: the weights never change, yet the model answers questions about people it never
saw, because retrieval puts the right biography into its prompt.

    python rag.py "What is the birth city of <name>?"   # show the retrieved documents and the answer
    python rag.py --eval                                  # recall and exact match on test and new people
    python rag.py --eval --adapter out/lora/rag-qa/adapter.safetensors   # with the level-3 reader
    python rag.py --agentic "In which year was the company that <name> worked for founded?"   # agentic RAG
    python rag.py --graph "How many people worked for Tidewater Group?"   # GraphRAG (nanolevels/graph.py)
    python rag.py --graph --eval                          # graph vs chunk RAG on questions about the whole collection

The index of every biography (new people included) is built on first use and cached in out/rag/.
--eval writes out/rag/metrics.json. --graph reads every document into an entity graph with the rag-qa reader
(cached in out/rag/graph/graph.json); --graph --eval writes out/rag/graph/metrics.json.

Retrieval always returns something, relevant or not. So the best match's score is compared with a
threshold chosen on dev questions (about the dev-new people, who are in the collection, and about
made-up people): below it, nothing in the collection seems to be about the question, and the answer
is marked a guess.

--agentic runs the loop of nanolevels/agent.py with the agent adapter (train_lora.py --task agent): the model
writes follow-up questions, each retrieves a document, until it writes its final answer; the trace is printed as
it grows. --agentic --eval scores it on the two-hop questions and writes out/rag/agentic.json.
"""

import argparse
import os
import random
import sys
import time

from nanolevels import cli, data, graph
from nanolevels.agent import evaluate_agent, retriever, run_model_agent
from nanolevels.device import pick_device
from nanolevels.evaluate import ANSWER_TOKENS, complete, eval_rag
from nanolevels.files import shown, write_json
from nanolevels.prompting import few_shot, rag_prompt
from nanolevels.retrieval import best_scores, choose_threshold, load_or_build_index, retrieval_recall
from nanolevels.world import ATTRIBUTES, fresh_people, qa_pair

EMBEDDERS = ("tfidf", "gpt")
MADE_UP_SEED = 1  # fresh_people's seed for the made-up people of the threshold (the next seed: those reported)
AGENT = "out/lora/agent/adapter.safetensors"


def parse_args(argv):
    p = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("question", nargs="?", help="a question to answer from the documents")
    p.add_argument("--eval", action="store_true", help="score retrieval and answers on the test and new questions")
    p.add_argument("--checkpoint", default="out/pretrain/model.safetensors",
                   help="the model (default: out/pretrain/model.safetensors)")
    p.add_argument("--adapter", default=None,
                   help=f"a LoRA adapter to load onto the model (from train_lora.py; default: none, {AGENT} with "
                        f"--agentic, {data.READER} with --graph: the reader that extracts the graph)")
    p.add_argument("--agentic", action="store_true",
                   help="agentic RAG: the model asks follow-up questions and reads a document for each (see "
                        "nanolevels/agent.py)")
    p.add_argument("--graph", action="store_true",
                   help="GraphRAG: answer questions about the whole collection (counts, superlatives, lists, shared "
                        "neighbours) from an entity graph the reader extracts from every document (see "
                        "nanolevels/graph.py); with --eval, score it against top-k chunk RAG")
    p.add_argument("--embedder", default="tfidf", choices=EMBEDDERS,
                   help="tfidf: hashed TF-IDF bag of words; gpt: the model's mean hidden state (default: tfidf)")
    p.add_argument("--k", type=int, default=None,
                   help="documents retrieved per question (default: 2; with --agentic, per follow-up: 1, so that two "
                        "hops of documents fit the model's block)")
    p.add_argument("--demos", type=int, default=0,
                   help="few-shot demonstrations (QA pairs of train people) before the documents (default: 0)")
    p.add_argument("--world", default=data.WORLD_DIR, help="the prepared world (default: data/world)")
    p.add_argument("--out", default="out/rag",
                   help="index cache and metrics.json; --graph: graph/graph.json and graph/metrics.json in it "
                        "(default: out/rag)")
    p.add_argument("--seed", type=int, default=0,
                   help="which demonstrations are drawn; --graph --eval: which global questions (default: 0)")
    p.add_argument("--global-questions", type=int, default=30,
                   help="--graph --eval: questions of each kind, a sample drawn with --seed (default: 30)")
    cli.add_device_flags(p, dtype=False)  # --device --threads
    args = p.parse_args(argv)
    args.k = args.k if args.k is not None else 1 if args.agentic else 2
    if args.agentic and args.graph:
        raise ValueError("--agentic and --graph are two ways of answering; choose one")
    if args.agentic:
        args.adapter = args.adapter or AGENT
        if args.demos:
            raise ValueError("--demos are for one-shot RAG; the agent learned its format and takes none")
    if args.graph:
        args.adapter = args.adapter or data.READER
    if args.global_questions < 1:
        raise ValueError(f"--global-questions must be at least 1, got {args.global_questions}")
    if args.demos < 0:
        raise ValueError(f"--demos must be 0 or more, got {args.demos}")
    if args.k < 1:
        raise ValueError(f"--k must be at least 1, got {args.k}")
    if args.question is None and not args.eval:
        raise ValueError('ask a question (python rag.py "What is the birth city of ...?") or use --eval')
    if args.question is not None and not args.question.strip():
        raise ValueError("the question is empty; ask something about a person")
    return args


def made_up_questions(world_dir: str, n: int, seed: int) -> list[str]:
    """About n questions, each about a different made-up person (never in the collection), in the world's style."""
    people = fresh_people(data.load_world(world_dir), -(-n // len(ATTRIBUTES)), seed)
    return [qa_pair(p, a)["question"] for p in people for a in ATTRIBUTES]


def unsure_threshold(index, embedder, world_dir: str) -> float:
    """The best-match score below which an answer is a guess, chosen on the dev-new people's questions (in the
    collection, never pretrained) against as many about made-up people; the rule is retrieval.choose_threshold's."""
    known = [q["question"] for q in data.load_questions(world_dir, "dev-new")["dev-new"]]
    return choose_threshold(best_scores(index, embedder, known),
                            best_scores(index, embedder, made_up_questions(world_dir, len(known), MADE_UP_SEED)))


def agentic(args, model, tokenizer, search) -> None:
    """--agentic: one question's trace, printed as it grows, and/or the scores on the two-hop questions."""
    if args.question is not None:
        def show(i, text, source):
            print("".join(("  [retrieved] " if source == "retrieved" else "") + line + "\n"
                          for line in text.splitlines()), end="", flush=True)
        [trace] = run_model_agent(model, tokenizer, [args.question], search, on_text=show)
        if trace.ended != "answered":
            print(f"(no final answer: {trace.ended})")
    if args.eval:
        metrics = {"k": args.k, "adapter": args.adapter, "fingerprints": cli.fingerprints(args)}
        for split, qs in data.load_questions(args.world, "test", "new", hops=2).items():
            metrics[split] = r = evaluate_agent(model, tokenizer, search, qs, gap=True)
            print(f"agentic {split}: exact match {r['acc']:.3f}, {r['calls']:.2f} retrievals each, both documents "
                  f"found {r['recall_both']:.3f}, compositionality gap {r['gap']:.3f}; ended: "
                  + ", ".join(f"{why} {n}" for why, n in r["ended"].items()))
        write_json(os.path.join(args.out, "agentic.json"), metrics)
        print(f"wrote {shown(os.path.join(args.out, 'agentic.json'))}")


def main(argv=None):
    args = parse_args(argv)
    if args.graph:
        return graph.run(args)
    device = pick_device(args.device)
    model, tokenizer = cli.load_model(args.checkpoint, device, args.adapter)
    docs = data.load_documents(args.world)
    qa_train = data.load_questions(args.world, "train")["train"]
    if args.demos > len(qa_train):
        raise ValueError(f"--demos {args.demos} is more than the {len(qa_train)} questions about train people "
                         f"they are drawn from")
    demos = random.Random(args.seed).sample(qa_train, args.demos)
    budget = model.config.block_size - ANSWER_TOKENS
    if len(tokenizer.encode(few_shot("", demos))) >= budget:
        raise ValueError(f"{args.demos} demonstrations leave no room for a document in the model's "
                         f"{model.config.block_size}-token block; use fewer --demos")
    index, embedder = load_or_build_index(args.out, docs, args.embedder, model, tokenizer)
    if args.agentic:
        return agentic(args, model, tokenizer, retriever(index, embedder, args.k))
    threshold = unsure_threshold(index, embedder, args.world)

    if args.question is not None:
        hits = index.search(embedder.embed([args.question]), args.k)[0]
        for rank, (score, doc) in enumerate(hits, 1):
            print(f"[{rank}] {score:.3f}  {doc['text']}")
        unsure = hits[0][0] < threshold
        print(f"best match {hits[0][0]:.3f}, threshold {threshold:.3f} (chosen on the dev-new people)"
              + (": nothing in the collection seems to be about this, so the answer is a guess" if unsure else ""))
        prompt, dropped = rag_prompt(args.question, [doc["text"] for _, doc in hits], tokenizer, budget, demos)
        if dropped:
            print(f"note: {dropped} lowest-ranked document(s) dropped to fit the block", file=sys.stderr)
        print(f"answer{' (a guess)' if unsure else ''}: {complete(model, tokenizer, [prompt])[0].strip()}")

    if args.eval:
        metrics = {"k": args.k, "demos": args.demos, "embedder": args.embedder, "adapter": args.adapter,
                   "fingerprints": cli.fingerprints(args), "acc": {}, "example": {}, "by_attribute": {},
                   "retrieval": {}}
        questions = data.load_questions(args.world, "test", "new")
        for name in EMBEDDERS:  # the retrieval quality of every embedder; answers with the chosen one
            idx, emb = (index, embedder) if name == args.embedder else load_or_build_index(
                args.out, docs, name, model, tokenizer)
            metrics["retrieval"][name] = {}
            for split, qs in questions.items():
                if name == args.embedder:
                    r = eval_rag(model, tokenizer, idx, emb, qs, args.k, demos)
                    metrics["acc"][split], metrics["example"][split] = r.pop("acc"), r.pop("example")
                    metrics["by_attribute"][split] = r.pop("by_attribute")
                else:
                    _, r = retrieval_recall(idx, emb, qs, args.k)
                metrics["retrieval"][name][split] = r
                answers = f", exact match {metrics['acc'][split]:.3f}" if name == args.embedder else ""
                print(f"{name:6s} {split:4s}: " + ", ".join(f"{m} {v:.3f}" for m, v in r.items()) + answers)
        # answers marked a guess: on test and new everyone asked about is in the collection, so each is a false
        # alarm; questions about made-up people (not those the threshold was chosen on) should all be caught
        guesses = {split: int((best_scores(index, embedder, [q["question"] for q in qs]) < threshold).sum())
                   for split, qs in questions.items()}
        made_up = best_scores(index, embedder, made_up_questions(args.world, len(questions["new"]), MADE_UP_SEED + 1))
        metrics["unsure"] = {"threshold": threshold, "guesses": guesses,
                             "made_up_caught": float((made_up < threshold).mean())}
        print(f"answers marked a guess (best match below {threshold:.3f}): "
              + ", ".join(f"{split} {n} of {len(questions[split])}" for split, n in guesses.items())
              + f"; questions about made-up people caught: {metrics['unsure']['made_up_caught']:.3f}")
        # query latency: embed one question and search, averaged over up to 200 questions
        qs = [q["question"] for q in questions["new"]][:200]
        t0 = time.perf_counter()
        for q in qs:
            index.search(embedder.embed([q]), args.k)
        metrics["query_latency_ms"] = 1000 * (time.perf_counter() - t0) / len(qs)
        write_json(os.path.join(args.out, "metrics.json"), metrics)
        print(f"query latency {metrics['query_latency_ms']:.2f} ms ({args.embedder}); "
              f"wrote {shown(os.path.join(args.out, 'metrics.json'))}")


if __name__ == "__main__":
    sys.exit(cli.run(main))

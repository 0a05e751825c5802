"""Level 2, RAG: the weights never change, yet the model answers questions about people it never
saw, because retrieval puts the right documents into its prompt.

    python rag.py "What is the birth city of <name>?"  # the retrieved documents and the answer
    python rag.py --eval                                # recall and exact match, test and new
    python rag.py --eval --adapter out/lora/rag-qa/adapter.safetensors   # the level-3 reader
    python rag.py --agentic "In which year was the company that <name> worked for founded?"
    python rag.py --graph "How many people worked for Tidewater Group?"   # GraphRAG
    python rag.py --graph --eval                        # graph vs chunk RAG, global questions

Three lessons, each in its own section below:
  plain RAG    embed every document (new people included; cached in out/rag/), retrieve the top k
               for the question by cosine similarity, put them before it. --eval writes
               out/rag/metrics.json.
  agentic RAG  --agentic: the agent adapter (train_lora.py --task agent) writes follow-up questions,
               each retrieves a document, until it writes its final answer (nanolevels/agent.py);
               the trace is printed as it grows. --agentic --eval writes out/rag/agentic.json.
  GraphRAG     --graph: the rag-qa reader reads every document into an entity graph (cached in
               out/rag/graph/graph.json), and questions about the whole collection are answered by
               map-reduce over its communities. --graph --eval writes out/rag/graph/metrics.json.
"""

import argparse
import os
import random
import sys
import time
from collections import Counter

from nanolevels import cli, data, graph, provenance
from nanolevels.agent import evaluate_agent, retriever, run_model_agent
from nanolevels.device import pick_device
from nanolevels.evaluate import complete, eval_rag, report_row
from nanolevels.files import shown, write_json
from nanolevels.lora import load_adapted
from nanolevels.prompting import context_budget, few_shot, rag_prompt
from nanolevels.retrieval import (best_scores, choose_threshold, load_or_build_index,
                                  retrieval_recall)
from nanolevels.world import ATTRIBUTES, fresh_people, qa_pair

EMBEDDERS = ("tfidf", "gpt")
MADE_UP_SEED = 1  # fresh_people's seed of the threshold's made-up people (the next: those reported)


def parse_args(argv):
    p = cli.ArgumentParser(description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("question", nargs="?", help="a question to answer from the documents")
    p.add_argument("--eval", action="store_true",
                   help="score retrieval and answers on the test and new questions")
    p.add_argument("--checkpoint", default=cli.MODEL, help=f"the model (default: {cli.MODEL})")
    p.add_argument("--adapter", default=None,
                   help=f"a LoRA adapter to load onto the model (from train_lora.py; default: "
                        f"none, {cli.AGENT} with --agentic, {cli.READER} with --graph: the reader "
                        f"that extracts the graph)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--agentic", action="store_true",
                      help="agentic RAG: the model asks follow-up questions and reads a document "
                           "for each (see nanolevels/agent.py)")
    mode.add_argument("--graph", action="store_true",
                      help="GraphRAG: answer questions about the whole collection (counts, "
                           "superlatives, lists, shared neighbours) from an entity graph the "
                           "reader extracts from every document (see nanolevels/graph.py); with "
                           "--eval, score it against top-k chunk RAG")
    p.add_argument("--embedder", default="tfidf", choices=EMBEDDERS,
                   help="tfidf: hashed TF-IDF bag of words; gpt: the model's mean hidden state "
                        "(default: tfidf)")
    p.add_argument("--k", type=int, default=None,
                   help="documents retrieved per question (default: 2; with --agentic, per "
                        "follow-up: 1, so that two hops of documents fit the model's block)")
    p.add_argument("--demos", type=int, default=0,
                   help="plain RAG: few-shot demonstrations (QA pairs of train people) before the "
                        "documents (default: 0)")
    p.add_argument("--world", default=cli.WORLD_DIR,
                   help="the prepared world (default: data/world)")
    p.add_argument("--out", default=cli.RAG_OUT,
                   help=f"index cache and metrics.json; --graph: graph/graph.json and "
                        f"graph/metrics.json in it (default: {cli.RAG_OUT})")
    p.add_argument("--seed", type=int, default=0,
                   help="which demonstrations are drawn; --graph --eval: which global questions "
                        "(default: 0)")
    p.add_argument("--global-questions", type=int, default=30,
                   help="--graph --eval: questions of each kind, a sample drawn with --seed "
                        "(default: 30)")
    cli.add_device_flags(p, dtype=False)  # --device --threads
    args = p.parse_args(argv)
    args.k = args.k if args.k is not None else 1 if args.agentic else 2
    if args.adapter is None:
        args.adapter = cli.AGENT if args.agentic else cli.READER if args.graph else None
    if args.demos and (args.agentic or args.graph):
        raise ValueError("--demos are for plain RAG; the agent and the reader learned their format "
                         "and take none")
    for flag, value, least in (("--global-questions", args.global_questions, 1),
                               ("--demos", args.demos, 0), ("--k", args.k, 1)):
        if value < least:
            raise ValueError(f"{flag} must be at least {least}, got {value}")
    if args.question is None and not args.eval:
        raise ValueError('ask a question (python rag.py "What is the birth city of ...?") or use '
                         '--eval')
    if args.question is not None and not args.question.strip():
        raise ValueError("the question is empty; ask something about a person")
    return args


def scored(args) -> dict:
    """What a metrics.json's numbers are of: the model (and adapter)."""
    return provenance.current({"model": args.checkpoint, "adapter": args.adapter})


# --- plain RAG: one retrieval with the question, the top k documents above it ---------------------

def made_up_questions(world_dir: str, n: int, seed: int) -> list[str]:
    """About n questions in the world's style, each about a made-up person (in no document)."""
    people = fresh_people(data.load_world(world_dir), -(-n // len(ATTRIBUTES)), seed)
    return [qa_pair(p, a)["question"] for p in people for a in ATTRIBUTES]


def unsure_threshold(index, embedder, world_dir: str) -> float:
    """The best-match score below which an answer is a guess (retrieval.choose_threshold's rule),
    chosen on the dev-new people's questions (in the collection, never pretrained) against as many
    about made-up people."""
    known = [q["question"] for q in data.load_questions(world_dir, "dev-new")["dev-new"]]
    made_up = made_up_questions(world_dir, len(known), MADE_UP_SEED)
    return choose_threshold(best_scores(index, embedder, known),
                            best_scores(index, embedder, made_up))


def answer_one(args, model, tokenizer, index, embedder, demos, threshold) -> None:
    """The retrieved documents, how sure retrieval is, and the answer read from them."""
    hits = index.search(embedder.embed([args.question]), args.k)[0]
    for rank, (score, doc) in enumerate(hits, 1):
        print(f"[{rank}] {score:.3f}  {doc['text']}")
    unsure = hits[0][0] < threshold
    print(f"best match {hits[0][0]:.3f}, threshold {threshold:.3f} (chosen on the dev-new people)"
          + (": nothing in the collection seems to be about this, so the answer is a guess"
             if unsure else ""))
    docs = [doc["text"] for _, doc in hits]
    prompt, dropped = rag_prompt(args.question, docs, tokenizer, context_budget(model), demos)
    if dropped:
        print(f"note: {dropped} lowest-ranked document(s) dropped to fit the block",
              file=sys.stderr)
    [answer] = complete(model, tokenizer, [prompt])
    print(f"answer{' (a guess)' if unsure else ''}: {answer.strip()}")


def guesses(args, index, embedder, questions: dict, threshold: float) -> dict:
    """How many answers are marked a guess: on test and new everyone asked about is in the
    collection, so each is a false alarm; questions about made-up people (not those the threshold
    was chosen on) should all be caught."""
    marked = {split: int((best_scores(index, embedder, [q["question"] for q in qs]) < threshold)
                         .sum()) for split, qs in questions.items()}
    made_up = made_up_questions(args.world, len(questions["new"]), MADE_UP_SEED + 1)
    caught = float((best_scores(index, embedder, made_up) < threshold).mean())
    print(f"answers marked a guess (best match below {threshold:.3f}): "
          + ", ".join(f"{split} {n} of {len(questions[split])}" for split, n in marked.items())
          + f"; questions about made-up people caught: {caught:.3f}")
    return {"threshold": threshold, "guesses": marked, "made_up_caught": caught}


def evaluate(args, model, tokenizer, docs, index, embedder, demos, threshold) -> None:
    """metrics.json: retrieval recall of every embedder, exact match with the chosen one, guesses,
    query latency, and the report's rag-base row."""
    metrics = {"k": args.k, "demos": args.demos, "embedder": args.embedder, "adapter": args.adapter,
               "fingerprints": scored(args), "acc": {}, "example": {}, "by_attribute": {},
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
            scores = ", ".join(f"{m} {v:.3f}" for m, v in r.items())
            print(f"{name:6s} {split:4s}: {scores}{answers}")
    metrics["unsure"] = guesses(args, index, embedder, questions, threshold)
    # query latency: embed one question and search, averaged over up to 200 questions
    qs = [q["question"] for q in questions["new"]][:200]
    t0 = time.perf_counter()
    for q in qs:
        index.search(embedder.embed([q]), args.k)
    metrics["query_latency_ms"] = 1000 * (time.perf_counter() - t0) / len(qs)
    n = {split: len(qs) for split, qs in questions.items()}
    metrics["rows"] = [report_row("rag-base", 2, "one-hop", metrics["acc"], n, 0,
                                  metrics["fingerprints"], metrics["example"])]
    metrics["report"] = {"rag_k": args.k, "unsure": metrics["unsure"],
                         "retrieval": {name: {m: v["new"][m] for m in ("recall@1", "recall@5")}
                                       for name, v in metrics["retrieval"].items()}}
    write_json(os.path.join(args.out, "metrics.json"), metrics)
    print(f"query latency {metrics['query_latency_ms']:.2f} ms ({args.embedder}); "
          f"wrote {shown(os.path.join(args.out, 'metrics.json'))}")


def plain(args, model, tokenizer) -> None:
    docs = data.load_documents(args.world)
    qa_train = data.load_questions(args.world, "train")["train"]
    if args.demos > len(qa_train):
        raise ValueError(f"--demos {args.demos} is more than the {len(qa_train)} questions about "
                         f"train people they are drawn from")
    demos = random.Random(args.seed).sample(qa_train, args.demos)
    if len(tokenizer.encode(few_shot("", demos))) >= context_budget(model):
        raise ValueError(f"{args.demos} demonstrations leave no room for a document in the model's "
                         f"{model.config.block_size}-token block; use fewer --demos")
    index, embedder = load_or_build_index(args.out, docs, args.embedder, model, tokenizer)
    threshold = unsure_threshold(index, embedder, args.world)
    if args.question is not None:
        answer_one(args, model, tokenizer, index, embedder, demos, threshold)
    if args.eval:
        evaluate(args, model, tokenizer, docs, index, embedder, demos, threshold)


# --- agentic RAG: the model writes its own queries ------------------------------------------------

def agentic(args, model, tokenizer) -> None:
    """One question's trace, printed as it grows, and/or (--eval) the scores on the two-hop
    questions."""
    docs = data.load_documents(args.world)
    index, embedder = load_or_build_index(args.out, docs, args.embedder, model, tokenizer)
    search = retriever(index, embedder, args.k)
    if args.question is not None:
        def show(i, text, source):
            print("".join(("  [retrieved] " if source == "retrieved" else "") + line + "\n"
                          for line in text.splitlines()), end="", flush=True)
        [trace] = run_model_agent(model, tokenizer, [args.question], search, on_text=show)
        if trace.ended != "answered":
            print(f"(no final answer: {trace.ended})")
    if args.eval:
        metrics = {"k": args.k, "adapter": args.adapter, "fingerprints": scored(args)}
        for split, qs in data.load_questions(args.world, "test", "new", hops=2).items():
            metrics[split] = r = evaluate_agent(model, tokenizer, search, qs, gap=True)
            print(f"agentic {split}: exact match {r['acc']:.3f}, {r['calls']:.2f} retrievals each, "
                  f"both documents found {r['recall_both']:.3f}, compositionality gap "
                  f"{r['gap']:.3f}; ended: "
                  + ", ".join(f"{why} {n}" for why, n in r["ended"].items()))
        write_json(os.path.join(args.out, "agentic.json"), metrics)
        print(f"wrote {shown(os.path.join(args.out, 'agentic.json'))}")


# --- GraphRAG: an entity graph of the whole collection --------------------------------------------

def print_answer(question: str, g: dict, reps: list[dict]) -> None:
    """The answer, then the community reports it came from (partial answer, relevance) and its
    entities."""
    a = graph.answer(question, g, reps)
    name = lambda n: g["nodes"][n]["name"]  # noqa: E731
    print(f"answer: {a['text']}")
    if a["kind"] == "shared":
        print("from the neighbourhood of the person (local search): " + "; ".join(
            f"{name(s)} -{r}-> {name(t)}" for s, r, t in sorted(a["facts"])))
        return
    print(f"from {len(a['reports'])} of {len(reps)} community reports (partial answer, "
          f"relevance = facts used):")
    for report, score, partial in a["reports"]:
        if isinstance(partial, Counter):
            partial = ", ".join(f"{name(c)} {n}" for c, n in partial.most_common())
        elif isinstance(partial, set):
            partial = ", ".join(sorted(name(n) for n in partial))
        top = ", ".join(report["top"][:3])
        print(f"  community {report['id']} ({len(report['nodes'])} entities; top: {top}): "
              f"{partial} ({score})")
    entities = sorted({name(f[0]) for f in a["facts"]})
    if entities:
        print(f"entities ({len(entities)}): {', '.join(entities)}")


def print_scores(r: dict, info: dict, k: int) -> None:
    """The table of global questions, graph against chunk RAG, and the extraction's precision and
    recall."""
    def cell(m, kind):
        acc, ci = r["acc"][m][kind], r["ci"][m][kind]
        return "-" if acc is None else f"{100 * acc:5.1f}% [{100 * ci[0]:.1f}-{100 * ci[1]:.1f}]"
    print(f"\nglobal questions about the whole collection: exact match (95% interval); documents "
          f"an answer rests on (one per entity it uses) against k={k}")
    print(f"{'kind':<12}{'n':>4}  {'graph-rag':<22}{f'chunk-rag (k={k})':<22}"
          f"docs needed: mean, max, share > k")
    for kind in (*graph.KINDS, "overall"):
        need = r["docs_needed"][kind]
        need = f"{need['mean']:.1f}, {need['max']}, {100 * need['over_k']:.0f}%" if need else "-"
        print(f"{kind:<12}{r['n'][kind]:>4}  {cell('graph-rag', kind):<22}"
              f"{cell('chunk-rag', kind):<22}{need}")
    x = info["extraction"]
    print(f"extraction: {x['asked']:,} questions asked, {x['unquoted']:,} answers not found in "
          f"their document (dropped); the edges quoted, then those the vote keeps:")
    for stage in ("quoted", "voted"):
        e = x[stage]
        relations = ", ".join(f"{rel} {v['precision']:.3f}/{v['recall']:.3f}"
                              for rel, v in e["by_relation"].items())
        print(f"  {stage}: precision {e['precision']:.4f}, recall {e['recall']:.4f} "
              f"({e['edges']:,} edges, {e['true_edges']:,} in the world's tables); per relation "
              f"{relations}")
    print(f"built in {info['build_s']:.1f}s (reading {info['extract_s']:.1f}s, vote and "
          f"communities {info['cluster_s']:.2f}s)")


def build(args, model, tokenizer, docs: list[dict]) -> tuple[dict, dict, list, dict]:
    """(the extracted graph, the voted graph, its community reports, facts about them): the graph
    read from the documents, or reused while its documents, model and reader are the same."""
    wanted = provenance.current({"docs": os.path.join(args.world, "docs.jsonl"),
                                 "model": args.checkpoint, "adapter": args.adapter})
    extracted = graph.load_or_extract(os.path.join(args.out, "graph", "graph.json"), wanted, docs,
                                      graph.model_reader(model, tokenizer))
    t0 = time.time()
    g = graph.vote(extracted)
    adj = graph.adjacency(g)
    comms = graph.communities(adj)
    reps = graph.reports(g, graph.leaves(comms))
    info = {"nodes": len(g["nodes"]), "edges": len(g["edges"]), "communities": len(comms),
            "reports": len(reps), "levels": 1 + max((c["level"] for c in comms), default=0),
            "modularity": graph.modularity(adj, [c["nodes"] for c in comms if c["level"] == 0]),
            "extract_s": extracted["extract_s"], "cluster_s": time.time() - t0}
    info["build_s"] = info["extract_s"] + info["cluster_s"]
    print(f"graph: {info['nodes']:,} nodes, {info['edges']:,} edges from {len(docs):,} documents; "
          f"{info['communities']} communities at {info['levels']} level(s) (modularity "
          f"{info['modularity']:.3f}), {info['reports']} reports")
    return extracted, g, reps, info


def graph_rag(args, model, tokenizer) -> None:
    """Build (or reuse) the graph, then answer the question and/or (--eval) score graph RAG against
    chunk RAG on the global questions, writing <out>/graph/metrics.json."""
    docs = data.load_documents(args.world)
    extracted, g, reps, info = build(args, model, tokenizer, docs)
    if args.question is not None:
        print_answer(args.question, g, reps)
    if not args.eval:
        return
    people, companies = data.load_tables(args.world)
    truth = graph.true_facts(people, companies)
    info["extraction"] = {"asked": extracted["asked"], "unquoted": len(extracted["unquoted"]),
                          "quoted": graph.extraction_scores(extracted, truth),
                          "voted": graph.extraction_scores(g, truth)}
    questions = graph.global_questions(people, args.global_questions, args.seed)
    index, embedder = load_or_build_index(args.out, docs, args.embedder, model, tokenizer)
    hits = index.search(embedder.embed([q["question"] for q in questions]), args.k)
    r = graph.evaluate(questions, [[d["id"] for _, d in top] for top in hits], g, reps, args.k)
    print_scores(r, info, args.k)
    fingerprints = scored(args)
    rows = [report_row(f"{method}-global", 2, "global", {"new": r["acc"][method]["overall"]},
                       {"new": r["n"]["overall"]}, 0, fingerprints)
            for method in ("chunk-rag", "graph-rag")]
    report = {"graph": {key: info[key] for key in ("nodes", "edges", "communities", "build_s")}
              | {key: info["extraction"]["voted"][key] for key in ("precision", "recall")}}
    metrics = {"k": args.k, "adapter": args.adapter, "fingerprints": fingerprints, "graph": info,
               **r, "rows": rows, "report": report}
    path = os.path.join(args.out, "graph", "metrics.json")
    write_json(path, metrics)
    print(f"wrote {shown(path)}")


def main(argv=None):
    args = parse_args(argv)
    if args.graph and args.question is not None:
        graph.parse(args.question)  # a question of no known kind fails now, not after extraction
    if args.graph and not os.path.exists(args.adapter):
        raise FileNotFoundError(f"no reader adapter at {args.adapter}: --graph extracts the graph "
                                f"with the rag-qa reader; make it with python train_lora.py --task "
                                f"rag-qa (or give --adapter)")
    model, tokenizer = load_adapted(args.checkpoint, args.adapter, pick_device(args.device))
    lesson = agentic if args.agentic else graph_rag if args.graph else plain
    lesson(args, model, tokenizer)


if __name__ == "__main__":
    sys.exit(cli.run(main))

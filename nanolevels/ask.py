"""One question through every level: each method of the report card that can answer it, from a
finished run's files, with what it read, what it trained and what it cost.

The seed article's question, "which level should you choose?", on one question: a fact about a
person goes to the closed-book, prompted, retrieved and fine-tuned methods; a fact about a person's
employer to the two-hop ones and the agent; a question about the whole collection to chunk and
graph RAG. `python -m nanolevels --ask "..."` prints the table.
"""

import os
import time

from nanolevels import data, graph, program
from nanolevels.agent import retriever, run_model_agent
from nanolevels.evaluate import complete, exact_match, normalize
from nanolevels.files import read_json
from nanolevels.lora import load_adapted
from nanolevels.prompting import context_budget, qa_prompt, rag_prompt
from nanolevels.retrieval import load_or_build_index
from nanolevels.world import TWO_HOP_QUESTIONS, match_template


def paths(out: str) -> dict:
    """Where a run of `python -m nanolevels --out out` keeps what the methods need."""
    return {"model": os.path.join(out, "pretrain", "model.safetensors"),
            "program": os.path.join(out, "prompt", "program.json"),
            "qa": os.path.join(out, "lora", "qa", "adapter.safetensors"),
            "full": os.path.join(out, "full", "qa", "model.safetensors"),
            "reader": os.path.join(out, "lora", "rag-qa", "adapter.safetensors"),
            "agent": os.path.join(out, "lora", "agent", "adapter.safetensors"),
            "rag": os.path.join(out, "rag"),
            "graph": os.path.join(out, "rag", "graph", "graph.json"),
            "report": os.path.join(out, "report.json")}


def table_graph(people: list[dict], companies: list[dict]) -> dict:
    """The graph a perfect reader would extract: the world's tables as nodes and edges."""
    nodes, edges = {}, []
    for kind, rows in (("person", people), ("company", companies)):
        for row in rows:
            source = graph.node_id(kind, row["name"])
            nodes[source] = {"name": row["name"], "type": kind, "docs": []}
            for attribute, (relation, value_type) in graph.RELATIONS[kind].items():
                target = graph.node_id(value_type, row[attribute])
                nodes.setdefault(target, {"name": row[attribute], "type": value_type, "docs": []})
                edges.append({"source": source, "relation": relation, "target": target,
                              "docs": []})
    return {"nodes": nodes, "edges": edges}


def judge(question: str, world_dir: str):
    """(kind, about, the right answer, right(said) -> bool) from the world's tables: kind one-hop or
    two-hop (about: (person, attribute)) or global (about: None)."""
    people, companies = data.load_tables(world_dir)
    person = {p["name"]: p for p in people}
    for attribute, template in TWO_HOP_QUESTIONS.items():
        found = match_template(question, template)
        if found and found["name"] in person:
            employer = next(c for c in companies if c["name"] == person[found["name"]]["employer"])
            fact = employer[attribute]
            return "two-hop", (found["name"], attribute), fact, lambda said: exact_match(said, fact)
    try:
        kind, asked = graph.parse(question)
    except ValueError:  # not a global question: one about a person, or a one-line error
        name, attribute = program.parse_question(question, list(person))
        fact = person[name][attribute]
        return "one-hop", (name, attribute), fact, lambda said: exact_match(said, fact)
    table = table_graph(people, companies)
    everything = [{"id": "all", "level": 0, "parent": None, "nodes": sorted(table["nodes"])}]
    truth = graph.answer(question, table, graph.reports(table, everything))
    if kind == "shared":  # any person of the same company is right
        employer = person.get(asked["person"], {}).get("employer")
        valid = {normalize(p["name"]) for p in people if p["employer"] == employer} - \
            {normalize(asked["person"])}
        return "global", None, truth["text"], lambda said: normalize(said) in valid
    if kind == "list":
        valid = {normalize(n) for n in truth["value"]}
        return "global", None, truth["text"], lambda said: {normalize(n) for n in
                                                            said.split(", ")} == valid
    return "global", None, truth["text"], lambda said: normalize(said) == normalize(truth["text"])


def methods(kind: str, about, question: str, p: dict, world_dir: str) -> list:
    """(method, level, run) for each method that can answer a question of kind; run() returns (the
    answer, what the method read to give it)."""
    docs = data.load_documents(world_dir)
    index, embedder = load_or_build_index(p["rag"], docs, "tfidf", log=lambda *a: None)

    def top(k):
        return [doc for _, doc in index.search(embedder.embed([question]), k)[0]]

    def read(checkpoint, adapter=None, k=0):
        def run():
            model, tokenizer = load_adapted(checkpoint, adapter)
            found = top(k) if k else []
            prompt = rag_prompt(question, [d["text"] for d in found], tokenizer,
                                context_budget(model))[0] if found else qa_prompt(question)
            said = complete(model, tokenizer, [prompt])[0].strip()
            return said, ", ".join(d["id"] for d in found) or "closed book"
        return run

    def compiled():
        model, tokenizer = load_adapted(p["model"])
        prog = program.load_program(p["program"], model, tokenizer, "python -m nanolevels")
        [said] = program.run_program(model, tokenizer, prog, [{"person": about[0],
                                                               "attribute": about[1]}])
        template = prog["attributes"][about[1]]["prompts"][0]["template"]
        return said.strip(), f"closed book, the mined prompt {template!r}"

    def agentic():
        model, tokenizer = load_adapted(p["model"], p["agent"])
        [trace] = run_model_agent(model, tokenizer, [question], retriever(index, embedder, 1))
        return trace.answer, "; ".join(d["id"] for found in trace.retrieved for d in found)

    def global_rag(method):
        def run():
            g = graph.vote(read_json(p["graph"]))
            if method == "chunk-rag-global":
                return (graph.chunk_answer(question, g, {d["id"] for d in top(2)})["text"],
                        "the facts the reader read from the top 2 documents")
            reps = graph.reports(g, graph.leaves(graph.communities(graph.adjacency(g))))
            a = graph.answer(question, g, reps)
            return a["text"], f"{len(a['reports'])} of {len(reps)} community reports"
        return run

    if kind == "one-hop":
        return [("zero-shot", 1, read(p["model"])), ("prompt-program", 1, compiled),
                ("rag-base", 2, read(p["model"], k=2)), ("lora-qa", 3, read(p["model"], p["qa"])),
                ("full-ft-qa", 3, read(p["full"])),
                ("lora-rag-qa", 3, read(p["model"], p["reader"], k=2))]
    if kind == "two-hop":
        return [("closed-book-2hop", 2, read(p["model"])),
                ("rag-2hop", 2, read(p["model"], p["reader"], k=2)), ("agentic-rag", 2, agentic)]
    return [(method, 2, global_rag(method)) for method in ("chunk-rag-global", "graph-rag-global")]


def ask_every_level(question: str, out: str, world_dir: str) -> dict:
    """{question, kind, truth, rows: [{method, level, answer, right, read, trainable_params, step,
    step_s, answer_s}], base}: the question put to every method that can answer it, from the run in
    out (its report.json says what each method trained, how long its step took, and the base's)."""
    p = paths(out)
    missing = [path for path in p.values() if not os.path.exists(path)]
    if missing:
        raise FileNotFoundError(f"no finished run in {out} ({missing[0]} is missing); make one "
                                f"with: python -m nanolevels --out {out}")
    kind, about, truth, right = judge(question, world_dir)
    report = {row["method"]: row for row in read_json(p["report"])["rows"]}
    rows = []
    for method, level, run in methods(kind, about, question, p, world_dir):
        t0 = time.perf_counter()
        said, seen = run()
        row = report.get(method, {})
        rows.append({"method": method, "level": level, "answer": said, "right": right(said),
                     "read": seen, "trainable_params": row.get("trainable_params"),
                     "step": row.get("step"), "step_s": row.get("wall_s"),
                     "answer_s": time.perf_counter() - t0})
    pretrain = report.get("pretrain-cloze", {})
    return {"question": question, "kind": kind, "truth": truth, "rows": rows,
            "base": {"params": pretrain.get("trainable_params"), "step_s": pretrain.get("wall_s")}}

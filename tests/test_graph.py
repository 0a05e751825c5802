"""GraphRAG (nanolevels/graph.py, rag.py --graph): modularity and Louvain on a hand-made graph, extraction by a
stub reader, global questions against a brute-force count, map-reduce with perfect extraction, and bad input."""

import json
import os
import random
import shutil
from collections import Counter
from dataclasses import asdict

import pytest
import torch

import rag
from nanolevels import graph as g
from nanolevels.checkpoint import load_model
from nanolevels.lora import add_lora, save_adapter
from nanolevels.world import COMPANY_QUESTIONS, QUESTIONS, biography, make_world, profile

A, B = ["a0", "a1", "a2", "a3"], ["b0", "b1", "b2", "b3"]


def two_cliques():
    """Two K4 joined by the one edge a0-b0: 13 edges."""
    edges = [(x, y) for clique in (A, B) for i, x in enumerate(clique) for y in clique[i + 1:]] + [("a0", "b0")]
    adj = {n: {} for n in A + B}
    for x, y in edges:
        adj[x][y] = adj[y][x] = 1.0
    return adj


def test_modularity_of_two_cliques_is_exact_and_louvain_finds_them():
    adj = two_cliques()
    # 2m = 26. Each clique: 6 inside edges counted from both ends = 12, degrees 3 + 3 + 3 + 4 = 13:
    # Q = 2 * (12/26 - (13/26)^2) = 24/26 - 1/2 = 11/26
    assert g.modularity(adj, [set(A), set(B)]) == pytest.approx(11 / 26, abs=1e-12)
    assert g.modularity(adj, [set(A + B)]) == pytest.approx(0, abs=1e-12)  # everything inside: 1 - 1
    # every node alone: nothing inside, minus (6 nodes of degree 3, 2 of degree 4) squared over 26^2
    assert g.modularity(adj, [{n} for n in A + B]) == pytest.approx(-(6 * 9 + 2 * 16) / 676, abs=1e-12)
    for seed in range(5):
        assert g.louvain(adj, seed) == [set(A), set(B)]


def test_large_communities_are_clustered_again():
    # four K4 in two pairs: the K4 of a pair joined by six edges, the pairs by one. Level 0 finds the pairs
    # (Q 0.473 against 0.398 for the four K4), and inside a pair the two K4 are the better split (Q 0.167)
    quads = [[f"{q}{i}" for i in range(4)] for q in "pqrs"]
    adj = {n: {} for quad in quads for n in quad}
    links = [(x, y) for quad in quads for i, x in enumerate(quad) for y in quad[i + 1:]] + [("p3", "r3")]
    for a, b in ("pq", "rs"):
        links += [(f"{a}{i}", f"{b}{j}") for i, j in [(0, 0), (1, 1), (2, 2), (3, 3), (0, 1), (1, 2)]]
    for x, y in links:
        adj[x][y] = adj[y][x] = 1.0
    comms = g.communities(adj, max_size=6)
    leaves = g.leaves(comms)
    assert sorted(sorted(c["nodes"]) for c in leaves) == sorted(quads)  # every node in exactly one leaf
    assert {c["level"] for c in leaves} == {1} and all(c["parent"] is not None for c in leaves)
    assert len(g.communities(adj, max_size=100)) == len(comms) - len(leaves)  # no limit: level 0 only
    shuffled = {n: dict(reversed(adj[n].items())) for n in reversed(adj)}  # the same graph, other dict orders
    assert g.communities(shuffled, max_size=6) == comms


def stub_reader(answers: dict):
    """A reader that answers from a {question: answer} table ("" for a question it does not know)."""
    def read(questions, documents):
        assert len(questions) == len(documents)
        return [answers.get(q, "") for q in questions]
    return read


def test_extraction_by_a_stub_reader_builds_typed_edges_with_their_sources():
    docs = [{"id": "Ada Jo Crane#0", "person": "Ada Jo Crane", "text": "Ada Jo Crane hails from Lyon. Ada Jo Crane "
             "worked for Tidewater Group."},
            {"id": "Ada Jo Crane#1", "person": "Ada Jo Crane", "text": "Ada Jo Crane had a career at Tidewater Group. "
             "The birthplace of Ada Jo Crane is Lyon, not Porto."},
            {"id": "Tidewater Group#0", "company": "Tidewater Group", "text": "Tidewater Group is led by Vera Lee "
             "Thorne. The head office of Tidewater Group is in Hamburg."}]
    canned = {"What is the birth city of Ada Jo Crane?": " Lyon\n", "Which company did Ada Jo Crane work for?":
              " Tidewater Group", "Where is Tidewater Group headquartered?": " Hamburg",
              "Who is the chief executive of Tidewater Group?": " Vera Lee Thorne",
              "Which industry is Tidewater Group in?": " shipping"}  # not in the profile: made up

    def read(questions, documents):  # the second biography is misread: it gives another birth city
        assert len(questions) == len(documents)
        return ["Porto" if "not Porto" in d and q.startswith("What is the birth city") else canned.get(q, "")
                for q, d in zip(questions, documents)]
    graph = g.extract(docs, read, chunk=2, log=lambda *a: None)
    edges = {(e["source"], e["relation"], e["target"]): e["docs"] for e in graph["edges"]}
    assert edges == {
        ("person:ada jo crane", "born_in", "city:lyon"): ["Ada Jo Crane#0"],
        ("person:ada jo crane", "born_in", "city:porto"): ["Ada Jo Crane#1"],
        ("person:ada jo crane", "worked_for", "company:tidewater group"): ["Ada Jo Crane#0", "Ada Jo Crane#1"],
        ("company:tidewater group", "headquartered_in", "city:hamburg"): ["Tidewater Group#0"],
        ("company:tidewater group", "led_by", "person:vera lee thorne"): ["Tidewater Group#0"]}
    assert graph["nodes"]["company:tidewater group"] == {  # the subject of one document, named by two others
        "name": "Tidewater Group", "type": "company", "docs": ["Ada Jo Crane#0", "Ada Jo Crane#1", "Tidewater Group#0"]}
    assert graph["nodes"]["city:lyon"]["type"] == "city"
    assert graph["nodes"]["person:vera lee thorne"]["type"] == "person"  # a chief executive is a person
    assert graph["asked"] == 6 + 6 + 4 and graph["unquoted"] == [
        {"doc": "Tidewater Group#0", "question": "Which industry is Tidewater Group in?", "answer": "shipping"}]
    assert "industry:shipping" not in graph["nodes"]
    # a tie (one document each) keeps both values; a third document saying Lyon decides
    assert len(g.vote(graph)["edges"]) == 5
    docs.append({"id": "Ada Jo Crane#2", "person": "Ada Jo Crane", "text": "Ada Jo Crane was born in Lyon."})
    voted = g.vote(g.extract(docs, read, log=lambda *a: None))
    assert ("person:ada jo crane", "born_in", "city:porto") not in g.facts(voted) and "city:porto" not in voted["nodes"]
    assert len(voted["edges"]) == 4 and "person:ada jo crane" in voted["nodes"]
    with pytest.raises(ValueError, match="neither a person nor a company"):
        g.extract([{"id": "x#0", "text": "?"}], read, log=lambda *a: None)


def test_an_answer_counts_as_quoted_only_as_whole_words():
    text = "Ada Jo Crane was born on May 9, 1954. At university, Ada Jo Crane focused on Art History."
    assert g.quoted("may 9, 1954", text) and g.quoted("Art  History.", text) and g.quoted("History", text)
    assert not g.quoted("Hist", text) and not g.quoted("May 9, 195", text) and not g.quoted("Lyon", text)


def tables(world):
    return [asdict(p) for p in world.people], [asdict(c) for c in world.companies]


def test_every_global_question_matches_a_brute_force_count_over_the_people_table():
    world = make_world(120, seed=5)
    people = world.people
    questions = g.global_questions(tables(world)[0], per_kind=25, seed=1)
    kinds = Counter(q["kind"] for q in questions)
    assert set(kinds) == set(g.KINDS) and max(kinds.values()) == 25 and len({q["question"] for q in questions}) == len(
        questions)
    for q in questions:
        kind, slots = g.parse(q["question"])
        assert kind == q["kind"]
        if kind == "count":
            assert q["answer"] == str(sum(p.employer == slots["company"] for p in people))
        elif kind == "superlative":
            born = [p for p in people if p.birth_city == slots["city"]]
            counts = {c.name: sum(p.employer == c.name for p in born) for c in world.companies}
            most = max(counts.values())
            assert [c for c, n in counts.items() if n == most] == [q["answer"]]
        elif kind == "list":
            names = sorted(p.name for p in people if p.major == slots["major"] and p.employer == slots["company"])
            assert q["answer"] == names and 1 <= len(names) <= 4
        else:
            person = next(p for p in people if p.name == slots["person"])
            assert q["answer"] == sorted(p.name for p in people if p.employer == person.employer and p != person)
            assert q["answer"]
    assert g.global_questions(tables(world)[0], per_kind=25, seed=1) == questions  # seeded
    assert g.global_questions(tables(world)[0], per_kind=25, seed=2) != questions


def perfect_graph(world):
    """The graph a perfect reader extracts from one biography per person and one profile per company."""
    answers = {QUESTIONS[a].format(name=p.name): p.value(a) for p in world.people for a in QUESTIONS}
    answers |= {COMPANY_QUESTIONS[a].format(company=c.name): c.value(a) for c in world.companies
                for a in COMPANY_QUESTIONS}
    docs = ([{"id": f"{p.name}#0", "person": p.name, "text": biography(p, random.Random(0))} for p in world.people]
            + [{"id": f"{c.name}#0", "company": c.name, "text": profile(c, random.Random(0))} for c in world.companies])
    return g.vote(g.extract(docs, stub_reader(answers), log=lambda *a: None))


def test_map_reduce_with_perfect_extraction_answers_every_global_question():
    world = make_world(80, seed=11)
    graph = perfect_graph(world)
    truth = g.true_facts(*tables(world))
    scores = g.extraction_scores(graph, truth)
    assert scores["precision"] == scores["recall"] == 1.0 and scores["edges"] == len(truth)
    comms = g.communities(g.adjacency(graph), max_size=20)
    reports = g.reports(graph, g.leaves(comms))
    assert len(reports) > 5 and max(c["level"] for c in comms) >= 1  # many reports, from more than one level
    assert sum(len(r["nodes"]) for r in reports) == len(graph["nodes"])
    assert sum(len(r["facts"]) for r in reports) == len(graph["edges"])  # each fact in one report: counted once
    questions = g.global_questions(tables(world)[0], per_kind=20)
    for q in questions:
        a = g.answer(q["question"], graph, reports)
        assert g.is_right(q, a["value"]), (q, a["value"])
        if q["kind"] != "shared":
            assert all(score > 0 for _, score, _ in a["reports"])  # zero relevance dropped
    # chunk RAG over the documents of one person only: a count over the whole collection is out of its reach
    q = max((q for q in questions if q["kind"] == "count"), key=lambda q: int(q["answer"]))
    person = next(p for p in world.people if q["question"].endswith(f" {p.employer}?"))
    assert g.chunk_answer(q["question"], graph, {f"{person.name}#0"})["value"] == 1 < int(q["answer"])


def test_unknown_kind_and_unknown_entity():
    graph = perfect_graph(make_world(20, seed=2))
    reports = g.reports(graph, g.leaves(g.communities(g.adjacency(graph))))
    with pytest.raises(ValueError, match=r"it understands count: How many people worked for <company>\?; superlative"):
        g.answer("What is the meaning of life?", graph, reports)
    for question, name in [("How many people worked for Acme Rockets?", "Acme Rockets"),
                           ("Which company employs the most people born in Atlantis?", "Atlantis"),
                           ("Name a person who worked for the same company as Nobody Jo Here.", "Nobody Jo Here")]:
        a = g.answer(question, graph, reports)
        assert a["value"] is None and a["text"] == f"{name} is not in the collection" and not a["reports"]


def test_a_superlative_tie_names_no_company():
    # two people born in Lyon, at two companies: one each
    triples = [("Ada", "born_in", "Lyon"), ("Ada", "worked_for", "Acme"), ("Bo", "born_in", "Lyon"),
               ("Bo", "worked_for", "Zeta")]
    types = {"born_in": "city", "worked_for": "company"}
    graph = {"nodes": {}, "edges": []}
    for s, r, t in triples:
        for kind, name in (("person", s), (types[r], t)):
            graph["nodes"][g.node_id(kind, name)] = {"name": name, "type": kind, "docs": [f"{s}#0"]}
        graph["edges"].append({"source": g.node_id("person", s), "relation": r, "target": g.node_id(types[r], t),
                               "docs": [f"{s}#0"]})
    question, whole = "Which company employs the most people born in Lyon?", [
        {"id": "0", "level": 0, "parent": None, "nodes": sorted(graph["nodes"])}]
    a = g.answer(question, graph, g.reports(graph, whole))
    assert a["value"] is None and a["text"] == "a tie between Acme, Zeta"
    graph["edges"].pop()  # Bo's employer unknown: Acme alone
    assert g.answer(question, graph, g.reports(graph, whole))["value"] == "Acme"


@pytest.fixture(scope="module")
def reader(tiny_run, tmp_path_factory):
    """An adapter for the tiny model (B = 0: the base model's answers), as train_lora.py would save it."""
    model, _, _ = load_model(tiny_run["checkpoint"])
    torch.manual_seed(0)
    add_lora(model, r=2)
    path = str(tmp_path_factory.mktemp("reader") / "adapter.safetensors")
    save_adapter(path, model)
    return path


def test_cli_eval_writes_metrics_reuses_the_graph_and_reads_other_documents_again(tiny_run, reader, tmp_path, run_main):
    out = str(tmp_path / "rag")
    args = ["--graph", "--eval", "--checkpoint", tiny_run["checkpoint"], "--adapter", reader, "--world",
            tiny_run["world"], "--out", out, "--global-questions", "3"]
    code, printed, err = run_main(rag.main, *args)
    assert code == 0, err
    assert "extracting the graph" in printed and "overall" in printed and "  voted: precision" in printed
    m = json.load(open(os.path.join(out, "graph", "metrics.json")))
    assert set(m["acc"]) == {"graph-rag", "chunk-rag"} and set(m["acc"]["graph-rag"]) == {*g.KINDS, "overall"}
    assert m["n"]["overall"] == len(m["questions"]) >= 3 and m["n"]["count"] == 3
    assert {"nodes", "edges", "communities", "build_s", "extraction"} <= set(m["graph"])
    assert m["graph"]["extraction"]["asked"] == 384 and {"quoted", "voted"} <= set(m["graph"]["extraction"])
    assert set(m["fingerprints"]) == {"model", "adapter"}
    code, again, err = run_main(rag.main, *args)
    assert code == 0 and "extracting" not in again
    assert json.load(open(os.path.join(out, "graph", "metrics.json")))["acc"] == m["acc"]
    company = json.loads(open(os.path.join(tiny_run["world"], "companies.jsonl")).readline())["name"]
    code, printed, err = run_main(rag.main, "--graph", f"How many people worked for {company}?", *args[2:-2])
    assert code == 0, err
    assert "answer: " in printed and "extracting" not in printed
    other = tmp_path / "world"  # the same world but for one document: the graph is read again
    shutil.copytree(tiny_run["world"], other)
    docs = (other / "docs.jsonl").read_text().splitlines()
    (other / "docs.jsonl").write_text("\n".join(docs[:-1] + [docs[-1].replace(".", "!", 1)]) + "\n")
    code, printed, err = run_main(rag.main, *[str(other) if a == tiny_run["world"] else a for a in args])
    assert code == 0 and "its docs changed; building it again" in printed, err


def test_a_graph_file_from_another_world_or_model_is_built_again(tmp_path):
    wanted = {"docs": "d1", "model": "m1", "adapter": "a1"}
    path = str(tmp_path / "graph.json")
    kept = {"fingerprints": {"format": g.GRAPH_FORMAT, **wanted}, "nodes": {}, "edges": [], "extract_s": 1.0}
    docs = [{"id": "Ada Jo Crane#0", "person": "Ada Jo Crane", "text": "Ada Jo Crane was born in Lyon."}]
    read = lambda questions, documents: ["Lyon"] * len(questions)  # noqa: E731
    for changed, why in [({}, None), ({"docs": "d2"}, "its docs changed"),
                         ({"model": "m2", "adapter": "a2"}, "its model and adapter changed"),
                         ("{not json", "it is not readable")]:
        json.dump(kept, open(path, "w")) if isinstance(changed, dict) else open(path, "w").write(changed)
        lines = []
        graph = g.load_or_extract(path, {**wanted, **(changed if isinstance(changed, dict) else {})}, docs, read,
                                  lines.append)
        if why is None:
            assert graph["extract_s"] == 1.0 and not lines
        else:
            assert lines[0].endswith(f"{why}; building it again") or why in lines[0], lines
            assert graph["nodes"] and graph["fingerprints"]["format"] == g.GRAPH_FORMAT


@pytest.mark.parametrize("args, message", [
    (["--graph", "What is love?"], "it understands count: "),
    (["--graph", "--eval", "--global-questions", "0"], "--global-questions"),
    (["--graph", "--eval", "--adapter", "missing.safetensors"], "train_lora.py --task rag-qa"),
])
def test_user_errors(tiny_run, reader, tmp_path, run_main, args, message):
    if "--adapter" not in args:
        args = [*args, "--adapter", reader]
    code, _, err = run_main(rag.main, *args, "--checkpoint", tiny_run["checkpoint"], "--world", tiny_run["world"],
                            "--out", str(tmp_path))
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err

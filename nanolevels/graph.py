"""GraphRAG on the tiny world: documents -> entity graph -> communities -> map-reduced answers.

Each step as microsoft/graphrag does it and as done here, where only our own model reads:
step           in microsoft/graphrag                     here
extraction     a large LLM lists the entities and        the level-3 reader (rag-qa LoRA) is asked
               relationships (and claims) of each chunk  each attribute question of a document's
                                                         subject (its title); an answer is a typed
                                                         edge: person -worked_for-> company
merging        same type and name: one node              the same, names normalised; then an answer
                                                         must be quoted, and a vote per value
communities    hierarchical Leiden                       Louvain, written out; big ones split again
reports        LLM-written, from LLM-written             computed: members per type, hubs, facts
               descriptions of every entity and relation
global search  map: partial answers with a relevance     a template per kind; score: the facts used;
               score; reduce: combine (LLM calls)        reduce: an exact sum, argmax or union
local search   an entity's neighbourhood                 "the same company as X"

The baseline, chunk RAG, runs the SAME aggregation over the facts of the top k documents alone.
References: GraphRAG (Edge et al. 2024, arXiv 2404.16130); nano-graphrag; Louvain (Blondel et
al. 2008, arXiv 0803.0476); echo embeddings (arXiv 2402.15449).
"""

import os
import random
import re
import time
from collections import Counter, defaultdict

from nanolevels import provenance
from nanolevels.evaluate import complete, normalize, wilson
from nanolevels.files import read_json, shown, write_json
from nanolevels.prompting import context_budget, rag_prompt
from nanolevels.train import format_eta
from nanolevels.world import COMPANY_QUESTIONS, QUESTIONS, match_template

GRAPH_FORMAT = "nanolevels-graph-3"  # in every graph file: change it when extraction changes
MAX_COMMUNITY = 50  # a community with more entities is clustered again: a report stays readable
SEED = 0  # Louvain's node order
# The document twice in each prompt: on the first copy no token has seen what follows it; on the
# second every token can attend to the whole document (as echo embeddings do). It lets the reader
# copy names it never saw whole, such as a retrieval-only company's.
COPIES = 2

# What the reader is asked about a document's subject: attribute -> (relation, type of the answer's
# node). A value's type follows from the relation it came by, so "Lyon" from born_in is a city.
RELATIONS = {
    "person": {"birth_date": ("born_on", "date"), "birth_city": ("born_in", "city"),
               "university": ("studied_at", "university"), "major": ("majored_in", "major"),
               "employer": ("worked_for", "company"), "employer_city": ("worked_in", "city")},
    "company": {"headquarters": ("headquartered_in", "city"), "founded": ("founded_in", "year"),
                "ceo": ("led_by", "person"), "industry": ("in_industry", "industry")},
}
ASK = {"person": QUESTIONS, "company": COMPANY_QUESTIONS}  # the question template of each attribute

# One template per kind of global question; a placeholder names the type of the entity it holds.
KINDS = {
    "count": "How many people worked for {company}?",
    "superlative": "Which company employs the most people born in {city}?",
    "list": "Who studied {major} and worked for {company}?",
    "shared": "Name a person who worked for the same company as {person}.",
}
LIST_SIZES = (1, 4)  # list questions only where 1 to 4 people fit: an exact set of a few names


def node_id(kind: str, name: str) -> str:
    """A node's key: its type and normalised name ("city:lyon")."""
    return f"{kind}:{normalize(name)}"


# --- extraction: documents -> typed edges -------------------------------------------------------

def model_reader(model, tokenizer, copies: int = COPIES, batch_size: int = 128):
    """read(questions, documents) -> answers: each question asked with its document alone as
    context (`copies` times, as far as the block allows), as rag.py asks (greedy completion)."""
    budget = context_budget(model)

    def read(questions, documents):
        prompts = [rag_prompt(q, [d] * copies, tokenizer, budget)[0]
                   for q, d in zip(questions, documents)]
        return complete(model, tokenizer, prompts, batch_size=batch_size)
    return read


def quoted(value: str, text: str) -> bool:
    """Whether value appears in text as whole words (case and spacing aside)."""
    return re.search(rf"(?<!\w){re.escape(normalize(value))}(?!\w)", normalize(text)) is not None


def extract(docs: list[dict], read, chunk: int = 256, log=print) -> dict:
    """The entity graph of docs: {"nodes": {id: {name, type, docs}}, "edges": [{source, relation,
    target, docs}], "asked": questions asked, "unquoted": [{doc, question, answer}]}.

    read(questions, documents) -> answers is asked every attribute question about each document's
    subject; an answer becomes an edge from the subject to a node of the relation's type, and every
    node and edge keeps the ids of the documents that stated it. Documents are read `chunk` at a
    time (a document is one chunk), with a progress line after each."""
    nodes, edges, unquoted, asked = {}, {}, [], 0

    def add_node(kind, name, doc_id):
        key = node_id(kind, name)
        # the documents as a dict's keys, in order: a city of thousands of people checks in O(1)
        nodes.setdefault(key, {"name": name, "type": kind, "docs": {}})["docs"][doc_id] = None
        return key

    t0 = time.time()
    for start in range(0, len(docs), chunk):
        asks = []  # (document, subject type, subject, attribute, question) per question
        for doc in docs[start:start + chunk]:
            # a biography or a company profile: that says which questions to ask
            kind = next((k for k in RELATIONS if k in doc), None)
            if kind is None:
                raise ValueError(f"document {doc['id']} names neither a person nor a company; "
                                 f"regenerate the world with: python data/world/prepare.py")
            # the subject is the document's title (its id before "#"), as a real collection's
            # documents have titles
            subject = doc["id"].rpartition("#")[0] or doc["id"]
            add_node(kind, subject, doc["id"])
            asks += [(doc, kind, subject, a, ASK[kind][a].format(name=subject, company=subject))
                     for a in RELATIONS[kind]]
        answers = read([q for *_, q in asks], [doc["text"] for doc, *_ in asks])
        asked += len(asks)
        for (doc, kind, subject, attribute, question), answer in zip(asks, answers):
            value = answer.strip().rstrip(".")
            if not normalize(value):
                continue  # an empty answer adds nothing
            # a check GraphRAG does not make: the reader is meant to quote its document, so an
            # answer not in it (a company it made up, half a word) is a misreading, kept apart
            if not quoted(value, doc["text"]):
                unquoted.append({"doc": doc["id"], "question": question, "answer": value})
                continue
            relation, value_type = RELATIONS[kind][attribute]
            key = (node_id(kind, subject), relation, add_node(value_type, value, doc["id"]))
            edge = edges.setdefault(key, {"source": key[0], "relation": relation,
                                          "target": key[2], "docs": []})
            edge["docs"].append(doc["id"])
        done, elapsed = min(start + chunk, len(docs)), time.time() - t0
        log(f"read {done:,}/{len(docs):,} documents ({len(edges):,} edges, {len(unquoted):,} "
            f"answers not in their document) in {format_eta(elapsed)}, "
            f"ETA {format_eta(elapsed / done * (len(docs) - done))}")
    nodes = {key: {**node, "docs": list(node["docs"])} for key, node in nodes.items()}
    return {"nodes": nodes, "edges": list(edges.values()), "asked": asked, "unquoted": unquoted}


def vote(graph: dict) -> dict:
    """The graph with, for each subject and relation, only the value stated by the most documents
    (all values tied for the most are kept), and without the nodes only a dropped edge named."""
    # every relation of this world has one value per subject, and each subject has several
    # documents, each read alone: one misread document would otherwise leave a second, wrong edge
    most = defaultdict(int)
    for e in graph["edges"]:
        most[e["source"], e["relation"]] = max(most[e["source"], e["relation"]], len(e["docs"]))
    kept = [e for e in graph["edges"] if len(e["docs"]) == most[e["source"], e["relation"]]]
    named = {e[end] for e in kept for end in ("source", "target")}
    targets = {e["target"] for e in graph["edges"]}
    return {**graph, "nodes": {n: v for n, v in graph["nodes"].items()
                               if n in named or n not in targets},
            "edges": kept}


def facts(graph: dict) -> set[tuple]:
    """The graph's edges as (source, relation, target) node ids."""
    return {(e["source"], e["relation"], e["target"]) for e in graph["edges"]}


def true_facts(people: list[dict], companies: list[dict]) -> set[tuple]:
    """Every edge a perfect reader would extract from the collection, from the world's tables."""
    rows = [("person", p) for p in people] + [("company", c) for c in companies]
    return {(node_id(kind, row["name"]), relation, node_id(value_type, row[attribute]))
            for kind, row in rows for attribute, (relation, value_type) in RELATIONS[kind].items()}


def extraction_scores(graph: dict, truth: set[tuple]) -> dict:
    """Precision (of the graph's edges) and recall (of the true edges), overall and per relation."""
    found = facts(graph)

    def pr(keep):
        f, t = {x for x in found if keep(x)}, {x for x in truth if keep(x)}
        return {"precision": len(f & t) / max(1, len(f)), "recall": len(f & t) / max(1, len(t))}
    relations = sorted({r for _, r, _ in truth})
    return {**pr(lambda x: True), "edges": len(found), "true_edges": len(truth),
            "by_relation": {r: pr(lambda x, r=r: x[1] == r) for r in relations}}


# --- communities: Louvain, hierarchical -------------------------------------------------------

def adjacency(graph: dict) -> dict[str, dict[str, float]]:
    """The undirected graph Louvain clusters: adj[a][b] = the number of edges between a and b."""
    adj = {n: defaultdict(float) for n in sorted(graph["nodes"])}
    for s, _, t in sorted(facts(graph)):  # sorted: a set's order changes from process to process
        adj[s][t] += 1
        adj[t][s] += 1
    return {n: dict(nbs) for n, nbs in adj.items()}


def modularity(adj: dict, communities: list) -> float:
    """Newman's Q = sum over communities c of (A_c / 2m - (K_c / 2m)^2), A_c the weight inside c
    from both ends, K_c its nodes' summed degrees, 2m all nodes': the share of edges inside
    communities, minus what a random graph with the same degrees would put there."""
    label = {n: i for i, c in enumerate(communities) for n in c}
    two_m = sum(w for nbs in adj.values() for w in nbs.values())
    if two_m == 0:
        return 0.0  # no edges: nothing to compare with chance
    inside = sum(w for n, nbs in adj.items() for m, w in nbs.items() if label[n] == label[m])
    degrees = Counter()
    for n, nbs in adj.items():
        degrees[label[n]] += sum(nbs.values())
    return inside / two_m - sum((k / two_m) ** 2 for k in degrees.values())


def move_nodes(adj: dict, rng: random.Random) -> dict:
    """Louvain's first phase: {node: community}. Each node in turn (a seeded order) leaves its
    community and joins the neighbouring one where it adds most modularity, until a whole pass
    moves nobody."""
    degree = {n: sum(nbs.values()) for n, nbs in adj.items()}
    two_m = sum(degree.values())
    label = {n: n for n in adj}
    total = dict(degree)  # community -> K_C
    order = sorted(adj)
    rng.shuffle(order)
    moved = two_m > 0
    while moved:
        moved = False
        for n in order:
            old = label[n]
            total[old] -= degree[n]
            links = defaultdict(float)  # community -> k_iC
            for m, w in adj[n].items():
                if m != n:
                    links[label[m]] += w
            # joining C adds (k_iC - k_i K_C / 2m) / m to Q (k_i the node's degree, K_C the degrees
            # summed over C): only the bracket is compared, and staying put is a candidate too
            best, best_gain = old, links[old] - degree[n] * total[old] / two_m
            for c, w in sorted(links.items()):  # ties: the current community, then the first label
                gain = w - degree[n] * total[c] / two_m
                if gain > best_gain + 1e-12:
                    best, best_gain = c, gain
            total[best] += degree[n]
            label[n] = best
            moved |= best != old
    return label


def louvain(adj: dict, seed: int = SEED) -> list[set]:
    """Communities of adj, largest first: move nodes (move_nodes), make each community one node,
    and repeat on that smaller graph until no node moves."""
    rng = random.Random(seed)
    members = {n: {n} for n in adj}  # node of the current graph -> the original nodes it stands for
    while True:
        label = move_nodes(adj, rng)
        if len(set(label.values())) == len(adj):
            break
        # a community's edges sum those between the communities (inside ones become a self-loop)
        merged = {c: defaultdict(float) for c in sorted(set(label.values()))}
        for n, nbs in adj.items():
            for m, w in nbs.items():
                merged[label[n]][label[m]] += w
        groups = defaultdict(set)
        for n, c in label.items():
            groups[c] |= members[n]
        adj, members = {c: dict(nbs) for c, nbs in merged.items()}, dict(groups)
    return sorted(members.values(), key=lambda c: (-len(c), min(c)))


def communities(adj: dict, max_size: int = MAX_COMMUNITY, seed: int = SEED) -> list[dict]:
    """Hierarchical communities: [{id, level, parent, nodes}]. Level 0 clusters the whole graph; a
    community of more than max_size nodes is clustered again (its own edges only) into level + 1,
    ids "3" -> "3.0", "3.1"."""
    out = []

    def split(nodes, level, parent):
        parts = louvain({n: {m: w for m, w in adj[n].items() if m in nodes} for n in sorted(nodes)},
                        seed)
        if parent is not None and len(parts) < 2:
            return  # Louvain found no split: the community stays whole
        for i, part in enumerate(parts):
            cid = f"{parent}.{i}" if parent is not None else str(i)
            out.append({"id": cid, "level": level, "parent": parent, "nodes": sorted(part)})
            if len(part) > max_size:
                split(part, level + 1, cid)
    split(set(adj), 0, None)
    return out


def leaves(comms: list[dict]) -> list[dict]:
    """The communities not split further: each node is in one, so a sum over them counts once."""
    parents = {c["parent"] for c in comms}
    return [c for c in comms if c["id"] not in parents]


def reports(graph: dict, comms: list[dict], top: int = 5) -> list[dict]:
    """One report per community, computed (no model writes it): entities per type, the `top`
    highest-degree entities, facts per relation, and the facts themselves (every edge out of a
    member: the map step's input)."""
    degree = Counter()
    out_of = defaultdict(list)
    for f in sorted(facts(graph)):
        degree[f[0]] += 1
        degree[f[2]] += 1
        out_of[f[0]].append(f)
    out = []
    for c in comms:
        fs = [f for n in c["nodes"] for f in out_of[n]]
        hubs = sorted(c["nodes"], key=lambda n: (-degree[n], n))[:top]
        out.append({**c, "types": dict(Counter(graph["nodes"][n]["type"] for n in c["nodes"])),
                    "top": [graph["nodes"][n]["name"] for n in hubs],
                    "relations": dict(Counter(r for _, r, _ in fs)), "facts": fs})
    return out


# --- the graph file -----------------------------------------------------------------------------

def load_or_extract(path: str, wanted: dict, docs: list[dict], read, log=print) -> dict:
    """The extracted graph of docs (every document's answers, before the vote): the one in path if
    it was made from `wanted` (the fingerprints of the documents, the model and the reader), else
    extracted again with read (see extract) and written there, with a line saying why."""
    wanted = {"format": GRAPH_FORMAT, **wanted}
    why = "there is none yet"
    if os.path.exists(path):
        try:
            graph = read_json(path)
            well_formed = (isinstance(graph, dict) and isinstance(graph.get("fingerprints"), dict)
                           and isinstance(graph.get("nodes"), dict)
                           and isinstance(graph.get("edges"), list) and "extract_s" in graph)
            why = (provenance.stale(graph["fingerprints"], wanted) if well_formed
                   else "it is not a graph file")
        except ValueError as e:  # not JSON, not UTF-8
            why = f"it is not readable ({e})"
        if why is None:
            return graph
        log(f"{shown(path)}: {why}; building it again")
    n_questions = sum(len(RELATIONS[k]) for d in docs for k in RELATIONS if k in d)
    log(f"extracting the graph: {n_questions:,} questions about the subjects of {len(docs):,} "
        f"documents, each asked with its document alone ({COPIES} copies)")
    t0 = time.time()
    graph = extract(docs, read, log=log)
    graph = {"fingerprints": wanted, "extract_s": time.time() - t0, **graph}
    write_json(path, graph)
    log(f"wrote {shown(path)}")
    return graph


# --- questions: generated from the tables, parsed against the templates, map-reduced -----------

def global_questions(people: list[dict], per_kind: int, seed: int = 0) -> list[dict]:
    """A seeded sample of per_kind questions of each kind about the whole collection (every person
    of every split), each {kind, question, answer}: answer is the count, the company, the exact set
    of names (list), or every valid name (shared: any one is right)."""
    staff = defaultdict(list)  # company -> the names of its people
    born = defaultdict(Counter)  # city -> {company: people born there who worked there}
    pairs = defaultdict(list)  # (major, company) -> names
    for p in people:
        staff[p["employer"]].append(p["name"])
        born[p["birth_city"]][p["employer"]] += 1
        pairs[p["major"], p["employer"]].append(p["name"])
    superlatives = []
    for city, counts in born.items():
        (company, most), *runner_up = counts.most_common(2)
        if not runner_up or most > runner_up[0][1]:  # only where the most is one company
            superlatives.append(({"city": city}, company))
    pool = {
        "count": [({"company": c}, str(len(names))) for c, names in staff.items()],
        "superlative": superlatives,
        "list": [({"major": m, "company": c}, sorted(names)) for (m, c), names in pairs.items()
                 if LIST_SIZES[0] <= len(names) <= LIST_SIZES[1]],
        "shared": [({"person": p["name"]},
                    sorted(n for n in staff[p["employer"]] if n != p["name"]))
                   for p in people if len(staff[p["employer"]]) > 1],
    }
    rng = random.Random(seed)
    out = []
    for kind, candidates in pool.items():
        candidates.sort(key=str)  # the sample depends on the seed alone, not on the tables' order
        for slots, answer in rng.sample(candidates, min(per_kind, len(candidates))):
            out.append({"kind": kind, "question": KINDS[kind].format(**slots), "answer": answer})
    return out


def is_right(question: dict, value) -> bool:
    """Exact match: the count or company; list: the exact set of names; shared: any valid name."""
    truth = question["answer"]
    if value is None:
        return False
    if question["kind"] == "list":
        return {normalize(v) for v in value} == {normalize(t) for t in truth}
    if question["kind"] == "shared":
        return normalize(value) in {normalize(t) for t in truth}
    return normalize(str(value)) == normalize(truth)


def parse(question: str) -> tuple[str, dict]:
    """(kind, {entity type: name as asked}) of a question written like one of KINDS' templates (any
    case, either final punctuation); anything else is a one-line ValueError listing the kinds."""
    for kind, template in KINDS.items():
        found = match_template(question, template)
        if found:
            return kind, found
    shapes = "; ".join(f"{kind}: " + template.replace("{", "<").replace("}", ">")
                       for kind, template in KINDS.items())
    raise ValueError(f"not a question the graph answers: {question!r}; it understands {shapes}")


def map_report(kind: str, fs: list[tuple], slots: dict):
    """One report's partial answer and the facts it rests on (its relevance score is how many)."""
    if kind == "count":  # the people who worked for the company
        used = {f for f in fs if f[1:] == ("worked_for", slots["company"])}
        return len(used), used
    if kind == "superlative":  # the employers of the people born in the city
        born = {f for f in fs if f[1:] == ("born_in", slots["city"])}
        people = {f[0] for f in born}
        works = {f for f in fs if f[1] == "worked_for" and f[0] in people}
        return Counter(f[2] for f in works), born | works
    # list: both facts of one person
    studied = {f for f in fs if f[1:] == ("majored_in", slots["major"])}
    worked = {f for f in fs if f[1:] == ("worked_for", slots["company"])}
    people = {f[0] for f in studied} & {f[0] for f in worked}
    return people, {f for f in studied | worked if f[0] in people}


def reduce_partials(kind: str, partials: list, graph: dict):
    """The answer's value from the partial answers, exact so that it can be scored by exact match:
    a sum (count), the argmax of summed counts (superlative: the names sharing the most, one unless
    tied, none if nobody qualifies), a union (list, as sorted names)."""
    name = lambda n: graph["nodes"][n]["name"]  # noqa: E731
    if kind == "count":
        return sum(partials)
    if kind == "superlative":
        total = sum(partials, Counter())
        most = max(total.values(), default=0)
        return sorted(name(c) for c, n in total.items() if n == most)
    return sorted(name(n) for n in set().union(*partials))


def answer(question: str, graph: dict, reps: list[dict]) -> dict:
    """{kind, value, text, reports: [(report, score, partial)], facts}: a global kind map-reduced
    over reps, the shared kind from the person's neighbourhood. An entity the graph does not hold
    is "not in the collection", never a made-up answer."""
    kind, asked = parse(question)
    slots = {t: node_id(t, name) for t, name in asked.items()}
    missing = [name for t, name in asked.items() if slots[t] not in graph["nodes"]]
    if missing:
        return {"kind": kind, "value": None, "text": f"{missing[0]} is not in the collection",
                "reports": [], "facts": set()}
    name = lambda n: graph["nodes"][n]["name"]  # noqa: E731
    if kind == "shared":  # local search: the person -> their company -> its other people
        person, fs = slots["person"], facts(graph)
        employers = {t for s, r, t in fs if s == person and r == "worked_for"}
        coworkers = {f for f in fs if f[1] == "worked_for" and f[2] in employers and f[0] != person}
        if not coworkers:
            return {"kind": kind, "value": None, "text": "no one in the collection", "reports": [],
                    "facts": {f for f in fs if f[0] == person and f[1] == "worked_for"}}
        value = min((name(f[0]) for f in coworkers), key=normalize)
        used = {f for f in fs if f[1] == "worked_for" and (f[0] == person or name(f[0]) == value)}
        return {"kind": kind, "value": value, "text": value, "reports": [], "facts": used}
    mapped = []
    for report in reps:
        partial, used = map_report(kind, report["facts"], slots)
        if used:  # relevance zero: dropped
            mapped.append((report, len(used), partial, used))
    value = reduce_partials(kind, [m[2] for m in mapped], graph)
    if kind == "list":
        text = ", ".join(value) or "no one in the collection"
    elif kind == "superlative":
        text = (f"no one in the collection was born in {asked['city']}" if not value
                else value[0] if len(value) == 1 else f"a tie between {', '.join(value)}")
        value = value[0] if len(value) == 1 else None  # a tie names no one company
    else:
        text = str(value)
    return {"kind": kind, "value": value, "text": text, "reports": [m[:3] for m in mapped],
            "facts": set().union(*(m[3] for m in mapped))}


def subgraph(graph: dict, doc_ids: set) -> dict:
    """What the documents doc_ids state: the nodes and edges they name, with only them as docs."""
    keep = lambda item: {**item, "docs": [d for d in item["docs"] if d in doc_ids]}  # noqa: E731
    return {"nodes": {n: keep(v) for n, v in graph["nodes"].items() if doc_ids & set(v["docs"])},
            "edges": [keep(e) for e in graph["edges"] if doc_ids & set(e["docs"])]}


def chunk_answer(question: str, graph: dict, doc_ids: set) -> dict:
    """The chunk-RAG baseline: the same answer() over the facts of the retrieved documents only, as
    one report (k documents fit one reader's context)."""
    sub = subgraph(graph, doc_ids)
    return answer(question, sub, reports(sub, [{"id": "retrieved", "level": 0, "parent": None,
                                                "nodes": sorted(sub["nodes"])}]))


def evaluate(questions: list[dict], retrieved: list[list[str]], graph: dict, reps: list[dict],
             k: int) -> dict:
    """Graph RAG and chunk RAG (reading the ids retrieved for each question) on global questions:
    exact match and its interval per kind, and how many documents each graph answer rests on (one
    per entity it uses) against k. Each question gets its two answers and its documents."""
    right = defaultdict(lambda: defaultdict(list))  # method -> kind -> [bool]
    needed = defaultdict(list)  # kind -> documents each graph answer rests on
    for q, doc_ids in zip(questions, retrieved):
        a = answer(q["question"], graph, reps)
        chunk = chunk_answer(q["question"], graph, set(doc_ids))
        q.update({"graph-rag": a["value"], "chunk-rag": chunk["value"], "retrieved": doc_ids})
        for method in ("graph-rag", "chunk-rag"):
            right[method][q["kind"]].append(is_right(q, q[method]))
        needed[q["kind"]].append(len({f[0] for f in a["facts"]}))
    for table in (*right.values(), needed):
        table["overall"] = [x for kind in KINDS for x in table[kind]]
    n = {kind: len(v) for kind, v in right["graph-rag"].items()}
    acc = {m: {kind: sum(v) / len(v) if v else None for kind, v in by_kind.items()}
           for m, by_kind in right.items()}
    ci = {m: {kind: wilson(a, n[kind]) if n[kind] else None for kind, a in by_kind.items()}
          for m, by_kind in acc.items()}
    docs_needed = {kind: {"mean": sum(v) / len(v), "max": max(v),
                          "over_k": sum(x > k for x in v) / len(v)}
                   if v else None for kind, v in needed.items()}
    return {"acc": acc, "ci": ci, "n": n, "docs_needed": docs_needed, "questions": questions}

"""Training text made from the world: pretraining corpus, reading pages, reading examples, traces.

The biographies and profiles repeated into a pretraining corpus; reading pages (a fresh person's
biography, then its questions answered); the reader's examples (documents, then every question
about the last one); the agent's traces. A fresh person or company is made up on the spot, so
what is said of it can only be read, never remembered.
References: RAFT (arXiv 2403.10131); Self-Ask's trace format (arXiv 2210.03350; see agent.py).
"""

import random
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import chain, islice

from nanolevels.prompting import answer_text, qa_prompt
from nanolevels.world import (ATTRIBUTES, COMPANY_ATTRIBUTES, PRETRAINED, TWO_HOP, Person, World,
                              biography, company_question, fresh_companies, fresh_people, profile,
                              qa_pair, two_hop_question)

def qa_block(person: Person, attributes) -> str:
    """The questions about person, each answered, in the layout every level prompts with."""
    return "".join(qa_prompt(q["question"]) + answer_text(q["answer"])
                   for q in (qa_pair(person, a) for a in attributes))

def reading_page(person: Person, rng: random.Random) -> str:
    """A biography followed by all six questions about it, answered, in random order (about fresh
    people, it teaches the base model to read an answer out of its context, as RAG needs)."""
    attributes = list(ATTRIBUTES)
    rng.shuffle(attributes)
    return biography(person, rng) + "\n" + qa_block(person, attributes)

def fresh_workforce(world: World, n: int, seed: int) -> Iterator[Person]:
    """n fresh people for reading pages and reading examples, each made when it is read: every
    other one works at a fresh company."""
    # A word the model never read has untrained embeddings and cannot be copied out of a document
    # (one run's reader got 49% of the dev-new employers, the known names only): fresh companies use
    # the words of the world's own, so every company word is read here, no company of the world's.
    companies = fresh_companies(world, n // 2, seed + 7)
    for i, person in enumerate(fresh_people(world, n, seed)):
        if i % 2:
            c = next(companies)
            person.employer, person.employer_city = c.name, c.headquarters
        yield person

# The agent's trace format (Self-Ask; see agent.py): every line the model writes starts with one.
FOLLOW_UP, INTERMEDIATE, FINAL = "Follow up: ", "Intermediate answer: ", "So the final answer is: "
# Of the reading pages, this share are agent traces (agent_examples written out): every word the
# agent will write, and every question about a company, is then one the model has read.
TRACE_SHARE = 0.05
# What agent_examples asks: two-hop questions, one-hop ones about a person or a company. A one-hop
# question is answered in one follow-up; knowing when to stop asking is part of the skill.
MIX = {"two-hop": 0.5, "person": 0.3, "company": 0.2}


def question_line(question: str) -> str:
    return f"Q: {question}\n"


def trace_turns(question: str, hops: list[tuple[str, str, str]]) -> list[tuple[str, str]]:
    """A finished trace as (prompt, answer) turns for data.encode_example: hops are (follow-up,
    document, intermediate answer), the last intermediate answer is the final one."""
    if not hops:
        raise ValueError("a trace needs at least one hop")
    # the question and each inserted document are prompts (no loss); the model's lines are answers
    turns, prompt, said = [], question_line(question), ""
    for follow_up, document, answer in hops:
        turns.append((prompt, said + f"{FOLLOW_UP}{follow_up}\n"))
        prompt, said = document + "\n", f"{INTERMEDIATE}{answer}\n"
    turns.append((prompt, said + f"{FINAL}{hops[-1][2]}\n"))
    return turns


def agent_traces(world: World, n: int, seed: int) -> Iterator[list[tuple[str, str]]]:
    """n training traces (see trace_turns) about fresh people at fresh companies, mixed as MIX says,
    each with the gold document of every hop: the person's biography, then the company's profile.
    Each is made when it is read."""
    rng = random.Random(seed + 1)  # not the streams that drew the people and companies
    companies = fresh_companies(world, n, seed=seed)
    kinds, weights = list(MIX), list(MIX.values())
    for person, employer in zip(fresh_people(world, n, seed=seed + 2), companies):
        # each at a company of its own
        person.employer, person.employer_city = employer.name, employer.headquarters
        kind = rng.choices(kinds, weights)[0]
        if kind == "two-hop":
            q = two_hop_question(person, employer, rng.choice(TWO_HOP))
            docs = [biography(person, rng), profile(employer, rng)]
            hops = [(h["question"], d, h["answer"]) for h, d in zip(q["hops"], docs)]
        elif kind == "person":
            q = qa_pair(person, rng.choice(ATTRIBUTES))
            hops = [(q["question"], biography(person, rng), q["answer"])]
        else:
            q = company_question(employer, rng.choice(COMPANY_ATTRIBUTES))
            hops = [(q["question"], profile(employer, rng), q["answer"])]
        yield trace_turns(q["question"], hops)


def agent_examples(world: World, n: int, seed: int) -> list[list[tuple[str, str]]]:
    """agent_traces as a list: what the agent is fine-tuned on."""
    return list(agent_traces(world, n, seed))


@dataclass
class Corpus:
    bios: dict[str, list[str]]  # person name -> biographies (the retrieval collection; all splits)
    profiles: dict[str, list[str]]  # company name -> profiles (in the retrieval collection too)
    store: list  # every distinct pretraining document, once, in the order made
    order: array  # the pretraining documents, shuffled at document level: store[order[i]]
    val_docs: list[str]  # held-out documents for validation loss (same kinds, other text)
    n_pages: int  # of the pretraining documents, reading pages (each in store once)
    n_traces: int  # and agent traces
    chars: int  # characters of all the pretraining documents, repeats counted

    @property
    def train_docs(self) -> Iterator[str]:
        """The pretraining documents in their order, read one by one."""
        return (self.store[i] for i in self.order)


def pretrained(world: World, bios: dict, profiles: dict, rng: random.Random,
               mix_qa: bool) -> tuple[list[str], list[str]]:
    """(the documents pretrained on, each once; validation documents): the PRETRAINED people's
    biographies and the known companies' profiles (and with mix_qa the train people's QA pairs, as
    often as their biographies); for validation one more of each (same facts, other wording)."""
    known = [p for p in world.people if p.split in PRETRAINED]
    companies = [c for c in world.companies if c.split == "known"]
    once = ([b for p in known for b in bios[p.name]]
            + [d for c in companies for d in profiles[c.name]])
    val_docs = [biography(p, rng) for p in known] + [profile(c, rng) for c in companies]
    if mix_qa:
        for p in world.split("train"):
            for _ in bios[p.name]:
                attributes = list(ATTRIBUTES)
                rng.shuffle(attributes)
                once.append(qa_block(p, attributes))
    return once, val_docs


def make_corpus(world: World, bios_per_person: int = 5, epochs: int = 40,
                reading_share: float = 0.2, mix_qa: bool = False, store=None) -> Corpus:
    """Biographies and profiles of everyone, and the pretraining documents built from them: never a
    word about a dev-new or new person or company, never a question about a dev or test person.
    store: where each distinct pretraining document goes as it is made (a list by default;
    data.prepare_world's is a file, so that a big world's millions of pages never sit in memory)."""
    if bios_per_person < 1:
        raise ValueError(f"--bios-per-person must be at least 1, got {bios_per_person}")
    if epochs < 1:
        raise ValueError(f"--epochs must be at least 1, got {epochs}")
    if not 0 <= reading_share < 1:
        raise ValueError(f"--reading-share must be in [0, 1), got {reading_share}")
    store = [] if store is None else store
    rng = random.Random(world.seed + 1)
    bios = {p.name: [biography(p, rng) for _ in range(bios_per_person)] for p in world.people}
    profiles = {c.name: [profile(c, rng) for _ in range(bios_per_person)] for c in world.companies}
    once, val_docs = pretrained(world, bios, profiles, rng, mix_qa)
    # the repetition is written out, not left to more epochs of training: the reading pages below
    # are each seen once, so their answers can only be read off the page, never memorised (repeated
    # pages would spend the model's memory on people nobody asks about). Two paraphrases that came
    # out alike are one document of the store; pages and traces each name someone of their own.
    ids = {}
    for doc in once:
        if doc not in ids:
            ids[doc] = len(store)
            store.append(doc)
    order = array("i", [ids[doc] for doc in once]) * epochs
    # reading pages are reading_share of all documents, in validation too; TRACE_SHARE of them are
    # agent traces
    n_pages = round(reading_share / (1 - reading_share) * len(order))
    n_val_pages = round(reading_share / (1 - reading_share) * len(val_docs))
    n_traces, n_val_traces = round(TRACE_SHARE * n_pages), round(TRACE_SHARE * n_val_pages)
    fresh = fresh_workforce(world, n_pages + n_val_pages, seed=world.seed + 2)
    traces = ("".join(p + a for p, a in t)
              for t in agent_traces(world, n_traces + n_val_traces, world.seed + 5))
    chars = epochs * sum(len(doc) for doc in once)
    for doc in chain((reading_page(p, rng) for p in islice(fresh, n_pages - n_traces)),
                     islice(traces, n_traces)):
        order.append(len(store))
        store.append(doc)
        chars += len(doc)
    for _ in islice(fresh, n_traces):  # drawn, never written: the next pages stay as they were
        pass
    val_docs += ([reading_page(p, rng) for p in islice(fresh, n_val_pages - n_val_traces)]
                 + list(traces))
    # whole documents shuffled: with all paraphrases of one person in one context window, the
    # model would copy them instead of storing the facts
    rng.shuffle(order)
    rng.shuffle(val_docs)
    return Corpus(bios, profiles, store, order, val_docs, n_pages - n_traces, n_traces,
                  chars)


COMPANY_SHARE = 0.25  # of reading examples about a company: the reader reads every kind of document


def reading_examples(world: World, n: int, seed: int, k: int = 2) -> list[list[tuple[str, str]]]:
    """n examples for learning to read (RAFT-style), each a list of (prompt, answer) turns: 1 to k
    documents, the one about the person (or, for COMPANY_SHARE of them, the company) asked about
    LAST, then every question about it (six or four), in random order, each answered."""
    # All fresh, so the answers have to be read off the context, the skill retrieval needs for
    # `new` people. Several answers per context teach more per token than one.
    rng = random.Random(seed + 1)  # not the stream that drew the people
    people = list(fresh_workforce(world, n + k, seed=seed))
    companies = list(fresh_companies(world, n + k, seed=seed + 2))
    examples = []
    for i in range(n):
        if rng.random() < COMPANY_SHARE:
            entities, write, ask = companies, profile, company_question
            attributes = list(COMPANY_ATTRIBUTES)
        else:
            entities, write, ask = people, biography, qa_pair
            attributes = list(ATTRIBUTES)
        subject = entities[i]
        # distractors: positions among everyone but entity i (indices, not a copied list: n is
        # 20,000), placed first, where rag_prompt puts lower-ranked documents. A random place for
        # the right one hides whose document is whose; always two teaches "the second document",
        # not "the last one": hence 1 to k. A fresh company's name may repeat, and a namesake
        # would make the question ambiguous.
        picks = rng.sample(range(n + k - 1), rng.randint(0, k - 1))
        others = [entities[j + (j >= i)] for j in picks]
        context = [write(e, rng) for e in [*others, subject]
                   if e is subject or e.name != subject.name]
        rng.shuffle(attributes)
        questions = [ask(subject, a) for a in attributes]
        examples.append([(qa_prompt(q["question"], context if j == 0 else ()),
                          answer_text(q["answer"])) for j, q in enumerate(questions)])
    return examples

"""Worlds past the laptop: a world of a few thousand people keeps every invariant of the default
one (unique names, disjoint splits, every company word read, nothing retrieval-only pretrained),
and the streamed files are what the whole corpus held in memory would give."""

import os
import re

import numpy as np
import pytest

from nanolevels import data
from nanolevels.corpus import make_corpus
from nanolevels.files import read_jsonl
from nanolevels.tokenizer import EOT, Tokenizer
from nanolevels.world import (ATTRIBUTES, COMPANY_WORDS, EMPLOYERS, LARGE_NAME_POOLS, NAME_POOLS,
                              PEOPLE_PER_KNOWN_COMPANY, PRETRAINED, SCORED_PEOPLE, SMALL_WORLD,
                              SPLITS, fresh_companies, fresh_people, make_world)

BIG = 3000  # people: past SMALL_WORLD, so the large pools and the compound company words are used


@pytest.fixture(scope="module")
def big_world(tmp_path_factory):
    """(folder, World) of a world of BIG people, prepared with few biographies and small epochs."""
    folder = str(tmp_path_factory.mktemp("big") / "world")
    data.prepare_world(folder, people=BIG, bios_per_person=1, epochs=12, reading_share=0.3,
                       vocab_size=300, seed=5, log=lambda *a: None)
    return folder, make_world(BIG, seed=5)


def words_of(name: str) -> str:
    return name.rsplit(" ", 1)[0]


def test_big_world_names_are_unique_and_splits_disjoint(big_world):
    _, world = big_world
    people = [p.name for p in world.people]
    ceos = [c.ceo for c in world.companies]
    assert len(set(people)) == BIG and len(set(ceos)) == len(ceos) and not set(people) & set(ceos)
    assert [p.split for p in world.people] == sorted((p.split for p in world.people),
                                                     key=list(SPLITS).index)  # in SPLITS' order
    first, middle, last = LARGE_NAME_POOLS
    assert all(a in first and b in middle and c in last
               for a, b, c in (n.split() for n in people + ceos))
    # the large pools are in use: names no world of today's size can have
    assert sum(n.split()[2] not in NAME_POOLS[2] for n in people) > BIG / 2
    fresh = [p.name for p in fresh_people(world, 5000, seed=1)]
    assert len(set(fresh)) == 5000 and not set(fresh) & world.names()


def test_big_world_companies_in_proportion_each_with_a_word_of_its_own(big_world):
    _, world = big_world
    known = [c for c in world.companies if c.split == "known"]
    pretrained = sum(p.split in PRETRAINED for p in world.people)
    assert len(known) == round(pretrained / PEOPLE_PER_KNOWN_COMPANY) > len(EMPLOYERS)
    firsts = [c.name.split()[0] for c in world.companies]
    assert len(set(firsts)) == len(firsts)
    assert sum(words_of(c.name) not in COMPANY_WORDS + [words_of(n) for n in EMPLOYERS]
               for c in world.companies) > 100  # compounds
    for p in world.people:
        employer = world.company(p.employer)
        assert employer.headquarters == p.employer_city
        assert employer.split in ("known", p.split)


def test_big_world_pretraining_reads_every_company_word_and_no_retrieval_only_fact(big_world):
    folder, world = big_world
    docs = set()  # each distinct document once: a document's words are the same every time
    for name in ("pretrain.txt", "val.txt"):
        with open(os.path.join(folder, name), encoding="utf-8") as f:
            docs.update(f.read().split(f"\n{EOT}\n"))
    text = "\n".join(docs)
    words = set(re.findall(r"\w+", text))
    assert {w for c in world.companies for w in words_of(c.name).split()} <= words
    names = set(re.findall(r"[A-Z]\w+(?: [A-Z]\w+)+", text))  # runs of capitalised words
    for p in world.people:
        assert (p.name in names) == (p.split in PRETRAINED), p.name
    for c in world.companies:
        assert (c.name in names) == (c.ceo in names) == (c.split == "known"), c.name
    docs = read_jsonl(os.path.join(folder, "docs.jsonl"))
    assert len(docs) == BIG + len(world.companies)  # one biography each, one profile each


def test_streamed_files_are_the_corpus_held_in_memory(tmp_path):
    """pretrain.txt, train.bin and the tokenizer, written from the on-disk store, are what the
    in-memory corpus gives by the plain definitions: documents joined by <|endoftext|> lines, each
    one's tokens then <|endoftext|>, a tokenizer trained on the distinct documents joined by
    newlines in the order they first appear."""
    kw = dict(bios_per_person=2, epochs=3, reading_share=0.3, mix_qa=True)
    data.prepare_world(str(tmp_path), people=30, vocab_size=400, seed=4, log=lambda *a: None, **kw)
    docs = list(make_corpus(make_world(30, seed=4), **kw).train_docs)
    assert len(set(docs)) < len(docs)  # repeats, and the store holds each once
    assert (tmp_path / "pretrain.txt").read_text() == f"\n{EOT}\n".join(docs) + "\n"
    tokenizer = Tokenizer.load(str(tmp_path / "tokenizer.json"))
    assert tokenizer.merges == Tokenizer.train("\n".join(dict.fromkeys(docs)), 400).merges
    expected = data.encode_documents(tokenizer, docs)
    assert np.array_equal(data.load_tokens(str(tmp_path / "train.bin")), expected)


def test_disk_list_is_a_list(tmp_path):
    with data.DiskList(str(tmp_path / "list.tmp")) as store:
        texts = ["Kraków", "", "Ada Jo Crane was born in Malmö.", "x" * 10_000]
        for t in texts:
            store.append(t)
        assert len(store) == 4 and [store[i] for i in range(4)] == texts
        store.append("late")  # written after a read: still read back
        assert store[4] == "late" and store.sizes().tolist() == [len(t.encode()) for t in
                                                                  texts + ["late"]]
        path = store.path
    assert not os.path.exists(path)


def test_small_worlds_keep_todays_pools_and_companies():
    """Up to SMALL_WORLD people, names come from today's pools; while today's 54 company words
    suffice (up to ~965 people), the companies are today's too."""
    first, middle, last = NAME_POOLS
    for n, pools in ((SMALL_WORLD, NAME_POOLS), (SMALL_WORLD + 1, LARGE_NAME_POOLS)):
        assert make_world(n).pools == pools
    world = make_world(950, seed=2)
    assert all(a in first and b in middle and c in last
               for a, b, c in (n.split() for n in world.names()))
    assert sum(c.split == "known" for c in world.companies) == len(EMPLOYERS)
    assert {words_of(c.name) for c in world.companies if c.split != "known"} <= set(COMPANY_WORDS)
    starts = {words_of(c.name) for c in fresh_companies(world, 3000, seed=1)}
    assert starts <= set(COMPANY_WORDS) | {words_of(n) for n in EMPLOYERS}


def test_a_big_split_is_scored_on_the_same_sample_of_its_people(big_world):
    folder, world = big_world
    one, two = data.load_questions(folder, *SPLITS), data.load_questions(folder, *SPLITS, hops=2)
    assert len(one["train"]) == len(ATTRIBUTES) * len(world.split("train"))  # training data: all
    for split in ("dev", "test", "dev-new", "new"):  # 360, 660, 360, 660 people
        people = [p.name for p in world.split(split)]
        asked = {q["person"] for q in one[split]}
        assert len(asked) == min(len(people), SCORED_PEOPLE) and asked <= set(people)
        assert len(one[split]) == len(ATTRIBUTES) * len(asked)
        assert {q["person"] for q in two[split]} == asked  # one-hop and two-hop: the same people
        assert {p.name for p in world.scored_people(split)} == asked  # and cloze's
    assert data.load_questions(folder, "test") == {"test": one["test"]}


def test_retrieval_in_blocks_gives_what_one_block_gives(tmp_path, monkeypatch):
    """A big collection's index is embedded and searched a block at a time (its memory stays flat):
    the vectors and the hits are exactly those of one block."""
    from nanolevels import retrieval
    world = make_world(60, seed=1)
    docs = [{"id": f"{p.name}#{i}", "person": p.name, "text": t}
            for p, texts in zip(world.people, make_corpus(world, bios_per_person=2,
                                                          epochs=1).bios.values())
            for i, t in enumerate(texts)]
    questions = [f"Where was {p.name} born?" for p in world.people]
    whole, embedder = retrieval.load_or_build_index(str(tmp_path / "a"), docs, "tfidf",
                                                    log=lambda *a: None)
    hits = whole.search(embedder.embed(questions), 5)
    monkeypatch.setattr(retrieval, "EMBED_BLOCK", 32)
    monkeypatch.setattr(retrieval, "SCORES", 7 * len(docs))  # 7 queries at a time
    blocked, _ = retrieval.load_or_build_index(str(tmp_path / "b"), docs, "tfidf",
                                               log=lambda *a: None)
    assert np.array_equal(blocked.embeddings, whole.embeddings)
    assert blocked.search(embedder.embed(questions), 5) == hits

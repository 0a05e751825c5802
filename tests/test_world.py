"""The tiny world: disjoint splits, no leak of `new` people into pretraining, answers present in
biographies, determinism, and the files prepare_world writes."""

import os

import pytest

from nanolevels import data
from nanolevels.files import read_jsonl
from nanolevels.tokenizer import EOT
from nanolevels.corpus import TRACE_SHARE, fresh_workforce, make_corpus, reading_examples, reading_page
from nanolevels.world import (ATTRIBUTES, COMPANY_ATTRIBUTES, COMPANY_QUESTIONS, COMPANY_WORDS,
                              CITIES, EMPLOYERS, FIRST_NAMES, INDUSTRIES, LARGE_NAME_POOLS,
                              LAST_NAMES, MAJORS, MIDDLE_NAMES, MORE_COMPANY_WORDS, NAME_POOLS,
                              PRETRAINED, QUESTIONS, SPLITS, TEMPLATES, TWO_HOP, UNIVERSITIES,
                              cloze_prompt, fresh_companies, fresh_people, make_world)
import random


def prepare(out_dir, **kw):
    args = dict(people=40, bios_per_person=3, epochs=2, reading_share=0.3, vocab_size=300, seed=7, log=lambda *a: None)
    return data.prepare_world(str(out_dir), **(args | kw))


def test_splits_are_disjoint_and_sized():
    world = make_world(340, seed=1)
    names = {s: {p.name for p in world.split(s)} for s in SPLITS}
    assert [len(names[s]) for s in SPLITS] == [108, 41, 75, 41, 75]
    assert len(set().union(*names.values())) == 340  # disjoint
    fresh = {p.name for p in fresh_people(world, 200, seed=3)}
    assert len(fresh) == 200 and not fresh & {p.name for p in world.people}


def test_every_sentence_has_full_name_and_every_attribute_once():
    world = make_world(20, seed=2)
    corpus = make_corpus(world, bios_per_person=4)
    for person in world.people:
        for bio in corpus.bios[person.name]:
            sentences = bio.split(". ")
            assert len(sentences) == len(ATTRIBUTES)
            assert all(person.name in s for s in sentences)
            for a in ATTRIBUTES:
                assert person.value(a) in bio


def test_no_new_person_in_pretraining_text_and_answers_in_bios(tmp_path):
    prepare(tmp_path)
    text = (tmp_path / "pretrain.txt").read_text() + (tmp_path / "val.txt").read_text()
    people = read_jsonl(tmp_path / "people.jsonl")
    unseen = [p for p in people if p["split"] not in PRETRAINED]
    assert {p["split"] for p in unseen} == {"dev-new", "new"} and not any(p["name"] in text for p in unseen)
    known = [p for p in people if p["split"] in PRETRAINED]
    assert all(p["name"] in text for p in known)
    docs = read_jsonl(tmp_path / "docs.jsonl")
    assert {d["split"] for d in docs if "person" in d} == set(SPLITS)
    for split in SPLITS:
        qa = read_jsonl(tmp_path / f"qa_{split}.jsonl")
        assert len(qa) == len(ATTRIBUTES) * sum(p["split"] == split for p in people)
        for q in qa:
            bios = [d["text"] for d in docs if d.get("person") == q["person"]]
            assert bios and all(q["answer"] in b for b in bios)
            assert q["question"] == QUESTIONS[q["attribute"]].format(name=q["person"])


def test_no_qa_of_world_people_unless_mixed(tmp_path):
    prepare(tmp_path)
    qa_train = read_jsonl(tmp_path / "qa_train.jsonl")
    text = (tmp_path / "pretrain.txt").read_text()
    assert not any(q["question"] in text for q in qa_train)
    prepare(tmp_path / "mixed", mix_qa=True)
    text = (tmp_path / "mixed" / "pretrain.txt").read_text()
    assert all(q["question"] in text for q in qa_train)
    for split in ("dev", "test"):  # choosing and reporting splits are never asked about in pretraining
        assert not any(q["question"] in text for q in read_jsonl(tmp_path / f"qa_{split}.jsonl"))


def test_same_seed_same_bytes_other_seed_other_world(tmp_path):
    prepare(tmp_path / "a")
    prepare(tmp_path / "b")
    prepare(tmp_path / "c", seed=8)
    files = sorted(os.listdir(tmp_path / "a"))
    assert "tokenizer.json" in files and "train.bin" in files and "meta.json" in files
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    assert (tmp_path / "a" / "pretrain.txt").read_bytes() != (tmp_path / "c" / "pretrain.txt").read_bytes()


def test_documents_are_separated_and_shuffled(tmp_path):
    summary = prepare(tmp_path, reading_share=0.5)
    docs = (tmp_path / "pretrain.txt").read_text().rstrip("\n").split(f"\n{EOT}\n")
    pages = [d for d in docs if "\nQ: " in d or d.startswith("Q: ")]  # reading pages and agent traces
    assert 0.4 < len(pages) / len(docs) < 0.6
    traces = [d for d in docs if d.startswith("Q: ") and "\nFollow up: " in d]
    assert len(traces) == round(TRACE_SHARE * len(pages))
    assert summary["train_tokens"] > 0 and summary["vocab_size"] <= 300
    # shuffled at document level: the biographies of one person are not all adjacent
    first = [d.split(" ")[0] for d in docs[:10]]
    assert len(set(first)) > 3


def test_cloze_prompt_and_reading_page():
    person = make_world(10, seed=3).people[0]
    assert cloze_prompt(person, "birth_city") == f"{person.name} was born in"
    for a in ATTRIBUTES:
        sentence = TEMPLATES[a][0].format(name=person.name, value=person.value(a))
        assert sentence.startswith(cloze_prompt(person, a) + " ")
    page = reading_page(person, random.Random(0))
    assert page.count("\nA: ") == len(ATTRIBUTES) and page.endswith("\n")


def test_reading_examples_layout():
    world, n, k = make_world(20, seed=3), 60, 2
    examples = reading_examples(world, n, seed=1, k=k)
    assert examples == reading_examples(world, n, seed=1, k=k)
    assert {turns[0][0].count("\n") for turns in examples} == {2, 3}  # 1 or 2 documents
    world_names = {p.name for p in world.people} | {c.name for c in world.companies}
    people = list(fresh_workforce(world, n + k, seed=1))
    companies = list(fresh_companies(world, n + k, seed=3))
    assert sum(p.employer not in EMPLOYERS for p in people) == (n + k) // 2  # employers never pretrained, too
    kinds = [len(turns) == len(COMPANY_ATTRIBUTES) for turns in examples]
    assert 0.1 < sum(kinds) / n < 0.4  # about COMPANY_SHARE of them read a company's profile
    for i, (turns, is_company) in enumerate(zip(examples, kinds)):  # the i-th fresh entity is asked about
        asked = companies[i] if is_company else people[i]
        attributes, templates = (COMPANY_ATTRIBUTES, COMPANY_QUESTIONS) if is_company else (ATTRIBUTES, QUESTIONS)
        assert asked.name not in world_names and len(turns) == len(attributes)
        context, first_question = turns[0][0].split("\nQ: ")
        *distractors, own = context.split("\n")
        assert len(distractors) <= 1 and asked.name in own  # the right document sits last
        assert all(asked.name not in d for d in distractors)
        questions = ["Q: " + first_question] + [p for p, _ in turns[1:]]
        fill = (lambda a: templates[a].format(company=asked.name)) if is_company else (
            lambda a: templates[a].format(name=asked.name))
        expected = {f"Q: {fill(a)}\nA:": f" {asked.value(a)}\n" for a in attributes}
        assert dict(zip(questions, (a for _, a in turns))) == expected


@pytest.mark.parametrize("kw", [dict(people=4), dict(bios_per_person=0), dict(reading_share=1.0)])
def test_bad_sizes_raise(tmp_path, kw):
    with pytest.raises(ValueError):
        prepare(tmp_path, **kw)


def test_smallest_world_has_every_split():
    with pytest.raises(ValueError, match="dev.*empty.*--people 5"):
        make_world(4)
    assert {p.split for p in make_world(5).people} == set(SPLITS)


def test_companies_split_like_people():
    world = make_world(340, seed=1)
    by_split = {s: [c for c in world.companies if c.split == s] for s in ("known", "dev-new", "new")}
    assert [len(v) for v in by_split.values()] == [len(EMPLOYERS), 7, 12]
    assert len({c.name for c in world.companies}) == len(world.companies)
    assert len({c.name.split()[0] for c in world.companies}) == len(world.companies)  # one first word each
    assert not {c.ceo for c in world.companies} & {p.name for p in world.people}  # no chief executive is a person
    for p in world.people:
        employer = world.company(p.employer)
        assert p.employer_city == employer.headquarters
        own = employer.split == p.split  # works at a company of the person's own retrieval-only split
        assert employer.split == "known" or own
        assert p.split in ("dev-new", "new") or employer.split == "known"
    for s in ("dev-new", "new"):
        group = world.split(s)
        assert sum(world.company(p.employer).split == s for p in group) >= len(group) / 2
        assert {p.employer for p in group} >= {c.name for c in by_split[s]}  # every such company has people
    fresh = list(fresh_companies(world, 500, seed=4))
    assert not {c.name for c in fresh} & {c.name for c in world.companies}
    assert {c.name.rsplit(" ", 1)[0] for c in fresh} >= {name.rsplit(" ", 1)[0] for name in EMPLOYERS}
    assert all(c.split == "fresh" for c in fresh)
    assert fresh == list(fresh_companies(world, 500, seed=4))


def test_company_words_name_nothing_else():
    """A company's first word is how retrieval finds its profile: no other value of the world may use it."""
    other = {w.lower() for values in (CITIES, UNIVERSITIES, MAJORS, FIRST_NAMES, MIDDLE_NAMES, LAST_NAMES,
                                      list(EMPLOYERS)) for v in values for w in v.split()}
    assert not {w.lower() for w in COMPANY_WORDS} & other


def test_two_hop_answers_follow_from_the_profiles_never_the_biographies(tmp_path):
    prepare(tmp_path)
    docs = read_jsonl(tmp_path / "docs.jsonl")
    companies = {c["name"]: c for c in read_jsonl(tmp_path / "companies.jsonl")}
    people = {p["name"]: p for p in read_jsonl(tmp_path / "people.jsonl")}
    for split in SPLITS:
        qa2 = read_jsonl(tmp_path / f"qa2_{split}.jsonl")
        assert len(qa2) == len(TWO_HOP) * sum(p["split"] == split for p in people.values())
        for q in qa2:
            bridge = people[q["person"]]["employer"]
            assert q["company"] == bridge and q["answer"] == companies[bridge][q["attribute"]]
            assert [h["answer"] for h in q["hops"]] == [bridge, q["answer"]]
            profiles = [d["text"] for d in docs if d.get("company") == bridge]
            bios = [d["text"] for d in docs if d.get("person") == q["person"]]
            assert profiles and all(q["answer"] in d for d in profiles)  # the second document answers it
            assert all(bridge in b for b in bios)  # the first names the bridge
            if q["attribute"] == "ceo":  # never the biography (years may collide with a birth date)
                assert not any(q["answer"] in b for b in bios)
    for name, c in companies.items():
        for d in (d["text"] for d in docs if d.get("company") == name):
            assert d.count(name) == len(COMPANY_ATTRIBUTES) and all(c[a] in d for a in COMPANY_ATTRIBUTES)


def test_no_new_company_profile_in_pretraining_text(tmp_path):
    prepare(tmp_path)
    text = (tmp_path / "pretrain.txt").read_text() + (tmp_path / "val.txt").read_text()

    companies = read_jsonl(tmp_path / "companies.jsonl")
    assert {c["split"] for c in companies} == {"known", "dev-new", "new"}
    for c in companies:
        assert (c["name"] in text) == (c["split"] == "known"), c["name"]
        assert (c["ceo"] in text) == (c["split"] == "known")


def test_every_company_word_is_read_in_pretraining():
    """Reading pages name fresh companies, so no company of the world has a word the model never read."""
    world = make_world(100, seed=2)
    corpus = make_corpus(world, bios_per_person=1, epochs=60)
    words = {w for doc in corpus.train_docs for w in doc.split()}
    assert all(w in words for w in COMPANY_WORDS)
    assert not any(c.name in doc for c in world.companies if c.split != "known" for doc in corpus.train_docs)


def test_the_larger_pools_name_nothing_else():
    """The compound company words name nothing else either, and the larger name pools repeat no
    word: enough of both for a world of over 100,000 people, and a bigger one is refused."""
    names = [w for pool in LARGE_NAME_POOLS for w in pool]
    other = {w.lower() for values in (CITIES, UNIVERSITIES, MAJORS, names, list(EMPLOYERS),
                                      INDUSTRIES) for v in values for w in v.split()}
    words = [w.lower() for w in COMPANY_WORDS + MORE_COMPANY_WORDS]
    assert len(set(words)) == len(words) and not set(words) & other
    assert all(len(set(pool)) == len(pool) for pool in LARGE_NAME_POOLS)
    assert [big[:len(pool)] for big, pool in zip(LARGE_NAME_POOLS, NAME_POOLS)] == list(NAME_POOLS)
    assert len(COMPANY_WORDS + MORE_COMPANY_WORDS) > 0.085 * 100_000  # companies per person, about
    with pytest.raises(ValueError, match="company words; ask for fewer people"):
        make_world(120_000)

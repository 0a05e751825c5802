"""Tests for nanolevels/retrieval.py: exact cosine search, save/load, stable TF-IDF, GPT mean pooling."""

import os
import zlib

import numpy as np
import pytest
import torch

from conftest import FP32
from nanolevels.model import GPT, GPTConfig
from nanolevels.retrieval import (BLOCK, GPTEmbedder, TfidfEmbedder, VectorIndex, choose_threshold,
                                  load_or_build_index, make_embedder, normalize_rows, recall_at_k, top_k_unordered)
from nanolevels.tokenizer import Tokenizer
from nanolevels.corpus import make_corpus
from nanolevels.world import QUESTIONS, make_world

DIM = 16


def random_index(n=200, seed=0):
    rng = np.random.default_rng(seed)
    index = VectorIndex(DIM, "random", {"seed": "0"})
    index.add(rng.standard_normal((n, DIM)), [{"id": str(i), "text": f"doc {i}"} for i in range(n)])
    return index


def brute_force(index, query, k):
    """The obvious reference: every cosine similarity, fully sorted, best first."""
    scores = index.embeddings @ (query / np.linalg.norm(query))
    order = np.argsort(-scores)[:k]
    return [str(i) for i in order], scores[order]


# ---- VectorIndex ----

@pytest.mark.parametrize("n, k", [(200, 1), (200, 5), (200, 37), (6 * BLOCK + 5, 5)])
def test_search_matches_brute_force(n, k):
    index = random_index(n)
    queries = np.random.default_rng(1).standard_normal((7, DIM)).astype(np.float32)
    batched = index.search(queries, k)
    assert len(batched) == 7
    for query, hits in zip(queries, batched):
        single = index.search(query, k)
        assert len(single) == 1
        for result in (hits, single[0]):
            ids, scores = brute_force(index, query, k)
            assert [doc["id"] for _, doc in result] == ids
            assert np.allclose([s for s, _ in result], scores, atol=1e-5)
            assert all(a >= b for (a, _), (b, _) in zip(result, result[1:]))


@pytest.mark.parametrize("n, k", [(10 * BLOCK + 17, 5), (3 * BLOCK, 3), (2 * BLOCK, 5)])
def test_block_prefilter_is_exact(n, k):
    """top_k_unordered's per-block prefilter finds exactly the k largest, ties and partial blocks included."""
    rng = np.random.default_rng(n)
    scores = rng.standard_normal((4, n)).astype(np.float32)
    scores[0, :] = 0.0  # all tied
    scores[1, -3:] = 10.0  # the best ones in the partial last block
    scores[2, 5 * BLOCK:5 * BLOCK + k] = 9.0  # all in one block
    top = top_k_unordered(scores, k)
    for row, idx in zip(scores, top):
        assert len(set(idx.tolist())) == k
        assert np.array_equal(np.sort(row[idx]), np.sort(row)[-k:])


def test_rows_are_unit_length_and_zero_rows_stay_zero():
    index = random_index(10)
    assert np.allclose(np.linalg.norm(index.embeddings, axis=1), 1.0, atol=1e-6)
    assert index.embeddings.dtype == np.float32
    index.add(np.zeros((1, DIM)), [{"id": "zero", "text": ""}])
    assert np.all(index.embeddings[-1] == 0) and len(index) == 11


def test_k_larger_than_index_returns_everything_sorted():
    index = random_index(4)
    [hits] = index.search(np.ones(DIM), k=10)
    assert sorted(doc["id"] for _, doc in hits) == ["0", "1", "2", "3"]
    assert [s for s, _ in hits] == sorted((s for s, _ in hits), reverse=True)


def test_empty_index_returns_no_hits():
    index = VectorIndex(DIM)
    assert len(index) == 0
    assert index.search(np.ones(DIM), k=3) == [[]]
    assert index.search(np.ones((2, DIM)), k=3) == [[], []]


def test_zero_query_scores_zero_not_nan():
    [hits] = random_index().search(np.zeros(DIM), k=5)
    assert len(hits) == 5 and all(s == 0.0 for s, _ in hits)


def test_bad_shapes_and_k_are_refused():
    index = random_index(5)
    with pytest.raises(ValueError, match="shape"):
        index.add(np.ones((2, DIM + 1)), [{"id": "a", "text": ""}, {"id": "b", "text": ""}])
    with pytest.raises(ValueError, match="one vector per document"):
        index.add(np.ones((2, DIM)), [{"id": "a", "text": ""}])
    with pytest.raises(ValueError, match="shape"):
        index.search(np.ones(DIM + 1), k=1)
    with pytest.raises(ValueError, match="k must be"):
        index.search(np.ones(DIM), k=0)


def test_add_in_two_calls_equals_one_call():
    rng = np.random.default_rng(2)
    vectors = rng.standard_normal((30, DIM))
    docs = [{"id": str(i), "text": ""} for i in range(30)]
    once, twice = VectorIndex(DIM), VectorIndex(DIM)
    once.add(vectors, docs)
    twice.add(vectors[:12], docs[:12])
    twice.add(vectors[12:], docs[12:])
    assert np.array_equal(once.embeddings, twice.embeddings) and once.docs == twice.docs


def test_save_load_round_trip(tmp_path):
    index = random_index(50)
    index.docs[3]["person"] = "Ada Jo Crane"  # extra fields travel with the documents
    path = str(tmp_path / "sub" / "index.npz")
    index.save(path)
    assert os.listdir(tmp_path / "sub") == ["index.npz"]  # one file: vectors and documents can never part
    loaded = VectorIndex.load(path)
    assert np.array_equal(loaded.embeddings, index.embeddings) and loaded.embeddings.dtype == np.float32
    assert loaded.docs == index.docs
    assert (loaded.dim, loaded.embedder_name, loaded.fingerprints) == (DIM, "random", {"seed": "0"})
    query = np.ones(DIM)
    assert loaded.search(query, 5) == index.search(query, 5)


def test_load_missing_index_is_one_line_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no index at") as e:
        VectorIndex.load(str(tmp_path / "nothing"))
    assert "\n" not in str(e.value)


# ---- TF-IDF ----

def test_tfidf_hashing_is_stable():
    # pinned buckets: the same on every machine and in every process (Python's hash() is salted)
    embedder = TfidfEmbedder(dim=4096)
    assert embedder.buckets("Ada Jo Crane").tolist() == [
        zlib.crc32(f.encode()) % 4096 for f in ["ada", "jo", "crane", "ada jo", "jo crane"]]
    assert embedder.buckets("CRANE, Jo Crane!").tolist()[0] == 126
    assert embedder.buckets("ada jo")[-1] == 1459 and embedder.buckets("jo crane")[-1] == 3395


def test_tfidf_weights():
    texts = ["the cat sat", "the dog sat", "the cat ran"]
    embedder = TfidfEmbedder(dim=64).fit(texts)
    v = embedder.embed(["the cat cat"])
    assert v.shape == (1, 64) and v.dtype == np.float32
    assert np.isclose(np.linalg.norm(v), 1.0, atol=1e-6)
    # reference: tf = 1 + log(count), idf = log((1 + N) / (1 + df)) + 1, per bucket
    the, cat = zlib.crc32(b"the") % 64, zlib.crc32(b"cat") % 64
    assert np.isclose(embedder.idf[the], np.log(4 / 4) + 1) and np.isclose(embedder.idf[cat], np.log(4 / 3) + 1)
    raw = np.zeros(64)
    for feature, count in [("the", 1), ("cat", 2), ("the cat", 1), ("cat cat", 1)]:
        bucket = zlib.crc32(feature.encode()) % 64
        raw[bucket] += (1 + np.log(count)) * embedder.idf[bucket]
    assert np.allclose(v[0], raw / np.linalg.norm(raw), atol=1e-6)


def people_docs(n=5):
    return [{"id": str(i), "person": str(i), "text": f"person {i} lives in town {i}"} for i in range(n)]


def test_index_is_cached_and_rebuilt_when_the_documents_change(tmp_path):
    docs = people_docs()
    messages = []
    index, embedder = load_or_build_index(str(tmp_path), docs, "tfidf", log=messages.append)
    assert len(index) == 5 and len(messages) == 1 and "indexed 5" in messages[0]
    again, _ = load_or_build_index(str(tmp_path), docs, "tfidf", log=messages.append)
    assert len(messages) == 1 and np.array_equal(again.embeddings, index.embeddings)
    docs[0]["text"] = "someone else entirely"
    load_or_build_index(str(tmp_path), docs, "tfidf", log=messages.append)
    assert "building it again" in messages[1]


def reordered(path):
    """The same file with its documents reversed: fingerprint, vectors and count all as before."""
    index = VectorIndex.load(path)
    index.docs = index.docs[::-1]
    index.save(path)


def foreign(path):
    np.savez(path, weights=np.ones(3))  # path ends in .npz, so savez keeps the name


def other_format(path):
    with np.load(path) as f:
        arrays = dict(f)
    np.savez(path, **(arrays | {"format": np.str_("nanolevels-index-1")}))


def wrong_shape(path):
    index = VectorIndex.load(path)
    index.embeddings = index.embeddings[:-1]
    VectorIndex.save(index, path)


@pytest.mark.parametrize("damage, reason", [
    (lambda path: os.remove(path), None),
    (lambda path: open(path, "r+b").truncate(os.path.getsize(path) // 2), "is not an index file"),
    (lambda path: open(path, "wb").close(), "is not an index file"),
    (lambda path: open(path, "wb").write(os.urandom(4096)), "is not an index file"),
    (reordered, "it holds other documents than it was built from"),
    (foreign, "is not a readable index"),
    (other_format, "is not a readable index (format nanolevels-index-1"),
    (wrong_shape, "is inconsistent"),
])
def test_a_damaged_index_cache_is_rebuilt_never_trusted(tmp_path, damage, reason):
    docs = people_docs(40)
    good, embedder = load_or_build_index(str(tmp_path), docs, "tfidf", log=lambda *a: None)
    path = str(tmp_path / "index_tfidf.npz")
    damage(path)
    messages = []
    index, embedder = load_or_build_index(str(tmp_path), docs, "tfidf", log=messages.append)
    assert index.docs == docs and np.array_equal(index.embeddings, good.embeddings)
    assert index.search(embedder.embed(["where does person 17 live?"]), 1)[0][0][1]["person"] == "17"
    if reason is None:
        assert len(messages) == 1 and messages[0].startswith("indexed 40")
    else:
        assert reason in messages[0] and messages[0].endswith("building it again"), messages
        assert path in messages[0] and "\n" not in messages[0] and "pickled" not in messages[0]
    assert load_or_build_index(str(tmp_path), docs, "tfidf", log=messages.append)[0].docs == docs
    assert len(messages) == (1 if reason is None else 2)  # and the rebuilt file is trusted next time


def test_choose_threshold():
    known, unknown = np.array([0.5, 0.6, 0.7]), np.array([0.1, 0.2, 0.3])
    assert choose_threshold(known, unknown) == pytest.approx(0.4)  # the middle of the gap
    # overlapping: 0.35 misclassifies one unknown (1/4) and no known; no cut does better
    assert choose_threshold(np.array([0.4, 0.5, 0.6]), np.array([0.1, 0.2, 0.3, 0.45])) == pytest.approx(0.35)
    # a tie: 0.15 lets one unknown of 2 through, 0.4 loses one known of 2 (0.25 does both): the higher of the two
    assert choose_threshold(np.array([0.2, 0.5]), np.array([0.1, 0.3])) == pytest.approx(0.4)


def test_tfidf_embed_before_fit_is_refused():
    with pytest.raises(ValueError, match="fit"):
        TfidfEmbedder().embed(["hello"])


def test_tfidf_finds_the_person_of_each_question():
    world = make_world(40)
    corpus = make_corpus(world, bios_per_person=2, epochs=1)
    docs = [{"id": f"{name}#{i}", "person": name, "text": bio}
            for name, bios in corpus.bios.items() for i, bio in enumerate(bios)]
    embedder = make_embedder("tfidf", [d["text"] for d in docs])
    index = VectorIndex(embedder.dim, embedder.name)
    index.add(embedder.embed([d["text"] for d in docs]), docs)
    questions = [(t.format(name=p.name), p.name) for p in world.people for t in QUESTIONS.values()]
    results = index.search(embedder.embed([q for q, _ in questions]), k=5)
    assert recall_at_k(results, [name for _, name in questions], k=1) >= 0.95


# ---- GPT embedder ----

def tiny_gpt_and_bytes_tokenizer():
    torch.manual_seed(0)
    tokenizer = Tokenizer([])  # bytes only: token = byte, so lengths are easy to reason about
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=16, n_layer=2, n_head=2, n_embd=32))
    return model.eval(), tokenizer


def test_hidden_states_feed_the_lm_head():
    model, _ = tiny_gpt_and_bytes_tokenizer()
    idx = torch.randint(0, 257, (2, 9))
    h = model.hidden_states(idx)
    assert h.shape == (2, 9, 32)
    logits, _ = model(idx, targets=idx)
    assert torch.allclose(model.lm_head(h), logits, atol=1e-6)


def test_gpt_embedder_shapes_norms_and_right_padding():
    model, tokenizer = tiny_gpt_and_bytes_tokenizer()
    embedder = GPTEmbedder(model, tokenizer, batch_size=3)
    texts = ["Ada", "Ada Jo Crane", "Bo", "a much longer text than the block", ""]
    vectors = embedder.embed(texts)
    assert vectors.shape == (5, 32) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors[:4], axis=1), 1.0, atol=1e-5)
    assert np.all(vectors[4] == 0)  # no tokens, nothing to average
    # right padding is invisible: alone or in a batch with longer texts, the same vector
    for text, v in zip(texts, vectors):
        assert np.allclose(embedder.embed([text])[0], v, **FP32)
    # a text longer than block_size keeps its first block_size tokens (bytes here)
    assert np.allclose(vectors[3], embedder.embed([texts[3][:16]])[0], **FP32)
    # a direct mean of the hidden states, for one text
    ids = torch.tensor([tokenizer.encode(texts[1])])
    with torch.no_grad():
        mean = model.hidden_states(ids)[0].mean(0).numpy()
    assert np.allclose(vectors[1], mean / np.linalg.norm(mean), **FP32)


def test_gpt_embedder_restores_training_mode():
    model, tokenizer = tiny_gpt_and_bytes_tokenizer()
    model.train()
    GPTEmbedder(model, tokenizer).embed(["hello"])
    assert model.training


# ---- make_embedder, recall ----

def test_make_embedder_refuses_unknown_names_and_missing_model():
    with pytest.raises(ValueError, match="unknown embedder 'bm25'"):
        make_embedder("bm25", ["a"])
    with pytest.raises(ValueError, match="needs a model"):
        make_embedder("gpt", ["a"])
    model, tokenizer = tiny_gpt_and_bytes_tokenizer()
    assert make_embedder("gpt", [], model, tokenizer).name == "gpt"


def test_recall_at_k():
    a, b, c = ({"id": x, "person": x, "text": ""} for x in "abc")
    results = [[(0.9, a), (0.5, b)], [(0.9, c), (0.5, a)], [(0.9, c), (0.8, b)]]
    assert recall_at_k(results, ["a", "a", "a"], k=1) == pytest.approx(1 / 3)
    assert recall_at_k(results, ["a", "a", "a"], k=2) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="one gold id per query"):
        recall_at_k(results, ["a"], k=1)


def test_normalize_rows_keeps_zero_rows():
    x = normalize_rows(np.array([[3.0, 4.0], [0.0, 0.0]]))
    assert np.allclose(x, [[0.6, 0.8], [0.0, 0.0]]) and x.dtype == np.float32

"""Retrieval for level 2 (RAG): embedders that turn texts into vectors, and an exact cosine index.

Documents are embedded once and L2-normalised, a question the same way; one matrix product scores
them all, exactly (millions call for approximate indexes: IVF, HNSW, faiss). Two embedders: hashed
TF-IDF (strong here: the name decides) and a GPT's mean hidden state (weak: not trained for it).
References: RAG (arXiv:2005.11401), DPR (arXiv:2004.04906), Sentence-BERT (arXiv:1908.10084).
"""

import json
import os
import re
import time
import zipfile
import zlib

import numpy as np
import torch

from nanolevels import provenance
from nanolevels.files import atomic_open, shown

INDEX_FORMAT = "nanolevels-index-3"  # in every index file: change it when embedders or file change


def normalize_rows(x: np.ndarray) -> np.ndarray:
    """Rows of x (n, d) divided by their L2 norms, as float32; zero rows stay zero."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0).astype(np.float32)


BLOCK = 1024  # documents per block in top_k_unordered's prefilter
SCORES = 2**26  # scores search() holds at once, at most (a batch of queries x every document)
EMBED_BLOCK = 4096  # documents embedded at once when an index is built (a multiple of 32)


def top_k_unordered(scores: np.ndarray, k: int) -> np.ndarray:
    """Column indices of the k largest scores of each row (Q, N), in no order; exact. argpartition
    (O(N), as costly as a batch's matrix product) runs only on the k blocks with the largest maxima
    (any other block's scores are all beaten by k scores, one in each) and the partial last one."""
    Q, n = scores.shape
    n_blocks = n // BLOCK
    if n_blocks <= k:
        return np.argpartition(scores, n - k, axis=1)[:, n - k:]
    block_max = scores[:, :n_blocks * BLOCK].reshape(Q, n_blocks, BLOCK).max(axis=2)  # (Q, blocks)
    best = np.argpartition(block_max, n_blocks - k, axis=1)[:, n_blocks - k:]  # (Q, k)
    candidates = (best[:, :, None] * BLOCK + np.arange(BLOCK)).reshape(Q, k * BLOCK)
    tail = np.broadcast_to(np.arange(n_blocks * BLOCK, n), (Q, n - n_blocks * BLOCK))
    candidates = np.concatenate([candidates, tail], axis=1)  # (Q, k * BLOCK + rest)
    c = candidates.shape[1]
    pick = np.argpartition(np.take_along_axis(scores, candidates, axis=1), c - k, axis=1)[:, c - k:]
    return np.take_along_axis(candidates, pick, axis=1)


class VectorIndex:
    """Unit-length document vectors (N, dim) and their documents: exact cosine-similarity search."""

    def __init__(self, dim: int, embedder_name: str = "", fingerprints: dict | None = None):
        self.dim = dim
        self.embedder_name = embedder_name  # which embedder made the vectors, e.g. "tfidf"
        self.fingerprints = fingerprints or {}  # what the vectors were made from (fingerprints())
        self.embeddings = np.zeros((0, dim), dtype=np.float32)  # (N, dim), rows of length 1 (or 0)
        self.docs: list[dict] = []  # docs[i] belongs to embeddings[i]; each has "id" and "text"

    def __len__(self):
        return len(self.docs)

    def add(self, vectors: np.ndarray, docs: list[dict]) -> None:
        """Append documents and their vectors (len(docs), dim), L2-normalised here."""
        vectors = np.asarray(vectors)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ValueError(f"vectors must have shape (n, {self.dim}), got {vectors.shape}")
        if len(vectors) != len(docs):
            raise ValueError(f"{len(vectors)} vectors for {len(docs)} documents: "
                             f"give one vector per document")
        self.embeddings = np.concatenate([self.embeddings, normalize_rows(vectors)])
        self.docs.extend(docs)

    def search(self, queries: np.ndarray, k: int) -> list[list[tuple[float, dict]]]:
        """The k best (score, doc) per query, best first; queries (dim,) or (Q, dim)."""
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        queries = np.asarray(queries)
        if queries.ndim == 1:
            queries = queries[None]  # (1, dim)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(f"queries must have shape ({self.dim},) or (Q, {self.dim}), "
                             f"got {queries.shape}")
        n, k = len(self), min(k, len(self))
        if n == 0:
            return [[] for _ in queries]
        block = max(1, SCORES // n)  # queries at a time: their (Q, N) scores stay ~256 MB
        if len(queries) > block:
            return [hits for b in range(0, len(queries), block)
                    for hits in self.search(queries[b:b + block], k)]
        # for unit vectors the cosine IS the dot product: a batch is one matrix product
        scores = normalize_rows(queries) @ self.embeddings.T  # (Q, N)
        if k < n:
            top = top_k_unordered(scores, k)  # (Q, k): the k largest, in no order
        else:
            top = np.broadcast_to(np.arange(n), scores.shape)  # (Q, N): every document
        top_scores = np.take_along_axis(scores, top, axis=1)  # (Q, k)
        order = np.argsort(-top_scores, axis=1, kind="stable")  # sort only the k, best first
        top, top_scores = (np.take_along_axis(a, order, axis=1) for a in (top, top_scores))
        return [[(float(s), self.docs[i]) for s, i in zip(row_scores, row)]
                for row_scores, row in zip(top_scores, top)]

    def save(self, path: str) -> None:
        """Write ONE .npz file, atomically: a crash never pairs vectors with other documents."""
        docs = np.frombuffer(json.dumps(self.docs, ensure_ascii=False).encode(), dtype=np.uint8)
        with atomic_open(path) as f:  # straight into the file: no copy of the vectors in memory
            np.savez(f, format=np.str_(INDEX_FORMAT), embeddings=self.embeddings, docs=docs,
                     dim=np.int64(self.dim), embedder_name=np.str_(self.embedder_name),
                     fingerprints=np.str_(json.dumps(self.fingerprints)))

    @classmethod
    def load(cls, path: str) -> "VectorIndex":
        """The index saved in path; anything unreadable or inconsistent is a one-line ValueError."""
        if not os.path.exists(path):
            raise FileNotFoundError(f"no index at {path}: build the index first")
        if not zipfile.is_zipfile(path):  # what np.load would misreport as "pickled data"
            raise ValueError(f"{path} is not an index file (empty, truncated or something else)")
        try:
            with np.load(path, allow_pickle=False) as f:
                if f["format"] != INDEX_FORMAT:
                    raise ValueError(f"format {f['format']}, not {INDEX_FORMAT}")
                dim, name = int(f["dim"]), str(f["embedder_name"])
                index = cls(dim, name, json.loads(str(f["fingerprints"])))
                embeddings, docs = f["embeddings"], json.loads(f["docs"].tobytes().decode())
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
            raise ValueError(f"{path} is not a readable index ({e})") from None
        if (embeddings.dtype != np.float32 or embeddings.shape != (len(docs), index.dim)
                or not isinstance(index.fingerprints, dict)
                or not all(isinstance(d, dict) and "id" in d and "text" in d for d in docs)):
            raise ValueError(f"{path} is inconsistent: {embeddings.shape} vectors for "
                             f"{len(docs)} documents")
        index.embeddings, index.docs = embeddings, docs
        return index


class TfidfEmbedder:
    """Hashed TF-IDF over lower-cased word unigrams and bigrams: no vocabulary, length `dim`."""

    name = "tfidf"

    def __init__(self, dim: int = 4096):
        self.dim = dim
        self.idf = None  # (dim,) float32, learned by fit()

    def buckets(self, text: str) -> np.ndarray:
        """The text's features (words and word pairs), each hashed to a bucket in [0, dim)."""
        words = re.findall(r"\w+", text.lower())
        # the pairs "ada jo" and "jo crane" are in this person's biographies only: the name decides
        features = words + [f"{a} {b}" for a, b in zip(words, words[1:])]
        # crc32 is the same on every machine and in every process; hash() is salted per process
        return np.array([zlib.crc32(f.encode()) % self.dim for f in features], dtype=np.int64)

    def fit(self, texts: list[str]) -> "TfidfEmbedder":
        """Learn each bucket's idf from its document frequency: how many texts contain it."""
        df = np.zeros(self.dim, dtype=np.int64)
        for text in texts:
            df[np.unique(self.buckets(text))] += 1
        # words in few documents weigh more: "crane" far more than "the", "of", "was"
        self.idf = (np.log((1 + len(texts)) / (1 + df)) + 1).astype(np.float32)
        return self

    def embed(self, texts: list[str]) -> np.ndarray:
        """(len(texts), dim) float32, unit rows: (1 + log count) * idf per bucket, L2-normalised."""
        if self.idf is None:
            raise ValueError("TfidfEmbedder.embed before fit(): fit it on the documents first")
        tf = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            buckets, counts = np.unique(self.buckets(text), return_counts=True)
            tf[row, buckets] = 1 + np.log(counts)  # term frequency, damped
        return normalize_rows(tf * self.idf)


class GPTEmbedder:
    """A text's vector: the mean of the GPT's last hidden states (after ln_f). Weak: they encode
    what comes next ("born in" -> a city), diluting the name; DPR and E5 are trained to retrieve."""

    name = "gpt"

    def __init__(self, model, tokenizer, batch_size: int = 32):
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size

    @torch.no_grad()
    def embed(self, texts: list[str]) -> np.ndarray:
        """(len(texts), n_embd) float32, unit rows; a long text keeps its first block_size."""
        block_size = self.model.config.block_size
        device = self.model.lm_head.weight.device
        was_training = self.model.training
        self.model.eval()  # no dropout: the same text always gets the same vector
        out = []
        for b in range(0, len(texts), self.batch_size):
            ids = [self.tokenizer.encode(t)[:block_size] for t in texts[b:b + self.batch_size]]
            T = max(1, max(len(i) for i in ids))
            # pad on the right: causal attention never lets a real token see the padding after it
            idx = torch.zeros(len(ids), T, dtype=torch.long)  # (B, T)
            mask = torch.zeros(len(ids), T)  # (B, T): 1 at real tokens
            for row, i in enumerate(ids):
                idx[row, :len(i)] = torch.tensor(i, dtype=torch.long)
                mask[row, :len(i)] = 1.0
            h = self.model.hidden_states(idx.to(device)).float().cpu()  # (B, T, C)
            # average over real positions only; an empty text gives a zero vector
            mean = (h * mask[:, :, None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)  # (B, C)
            out.append(mean.numpy())
        self.model.train(was_training)
        return normalize_rows(np.concatenate(out) if out
                              else np.zeros((0, self.model.config.n_embd)))


def make_embedder(name: str, docs_texts: list[str], model=None, tokenizer=None):
    """The embedder called name ("tfidf": fitted on docs_texts; "gpt": needs model, tokenizer)."""
    if name == "tfidf":
        return TfidfEmbedder().fit(docs_texts)
    if name == "gpt":
        if model is None or tokenizer is None:
            raise ValueError("the gpt embedder needs a model and its tokenizer: pass a checkpoint")
        return GPTEmbedder(model, tokenizer)
    raise ValueError(f"unknown embedder {name!r}: choose 'tfidf' or 'gpt'")


def recall_at_k(results: list[list[tuple[float, dict]]], gold_ids_per_query: list[str],
                k: int) -> float:
    """Share of queries whose top k hold a document about the gold person (doc["person"])."""
    if len(results) != len(gold_ids_per_query):
        raise ValueError(f"{len(results)} result lists for {len(gold_ids_per_query)} gold ids: "
                         "give one gold id per query")
    if not results:
        raise ValueError("recall_at_k of no queries: give at least one")
    found = sum(any(doc.get("person") == gold for _, doc in top[:k])
                for top, gold in zip(results, gold_ids_per_query))
    return found / len(results)


def retrieval_recall(index: VectorIndex, embedder, questions: list[dict], k: int):
    """(top-max(k, 5) hits, {"recall@1", "recall@5"}) for questions, each {question, person}."""
    hits = index.search(embedder.embed([q["question"] for q in questions]), max(k, 5))
    gold = [q["person"] for q in questions]
    return hits, {"recall@1": recall_at_k(hits, gold, 1), "recall@5": recall_at_k(hits, gold, 5)}


def best_scores(index: VectorIndex, embedder, texts: list[str]) -> np.ndarray:
    """Each text's best match: the cosine similarity of the one document that fits it best."""
    return np.array([hits[0][0] for hits in index.search(embedder.embed(texts), 1)])


def choose_threshold(known: np.ndarray, unknown: np.ndarray) -> float:
    """The best-match score below which retrieval found nothing relevant, from the best scores of
    dev questions about people in the collection (known) and about made-up people (unknown)."""
    scores = np.unique(np.concatenate([known, unknown]))  # sorted
    # the midway cut with fewest errors (both shares summed); of ties, the middle (of two, higher)
    cuts = (scores[:-1] + scores[1:]) / 2 if len(scores) > 1 else scores
    errors = (known[None] < cuts[:, None]).mean(1) + (unknown[None] >= cuts[:, None]).mean(1)
    best = np.flatnonzero(errors == errors.min())
    return float(cuts[best[len(best) // 2]])


def fingerprints(docs: list[dict], embedder) -> dict:
    """What an index's vectors depend on: format, documents in order, embedder and its setting."""
    setting = (embedder.dim if isinstance(embedder, TfidfEmbedder)
               else provenance.model(embedder.model))
    return {"format": INDEX_FORMAT, "docs": provenance.value([[d["id"], d["text"]] for d in docs]),
            "embedder": provenance.value([embedder.name, setting])}


def load_or_build_index(out_dir: str, docs: list[dict], embedder_name: str, model=None,
                        tokenizer=None, log=print):
    """(index, embedder) for docs, reusing out_dir/index_<embedder>.npz only when it holds these
    documents, embedded as now; anything else is built again, with a line saying why, and saved."""
    texts = [d["text"] for d in docs]
    embedder = make_embedder(embedder_name, texts, model, tokenizer)
    path = os.path.join(out_dir, f"index_{embedder_name}.npz")
    wanted = fingerprints(docs, embedder)
    if os.path.exists(path):
        try:
            index = VectorIndex.load(path)
            why = provenance.stale(index.fingerprints, wanted)
            if why is None and index.docs != docs:
                why = "it holds other documents than it was built from"
            if why is None:
                return index, embedder
            log(f"{shown(path)}: {why}; building it again")
        except ValueError as e:
            log(f"{e}: building it again")
    t0 = time.time()
    # a block at a time, normalised as add() does (row by row: the same vectors), into one array:
    # a big collection's vectors are held once, never beside a copy
    first = normalize_rows(embedder.embed(texts[:EMBED_BLOCK]))
    index = VectorIndex(first.shape[1], embedder_name, wanted)
    index.embeddings = np.empty((len(texts), index.dim), dtype=np.float32)
    index.embeddings[:len(first)] = first
    for b in range(EMBED_BLOCK, len(texts), EMBED_BLOCK):
        block = texts[b:b + EMBED_BLOCK]
        index.embeddings[b:b + len(block)] = normalize_rows(embedder.embed(block))
    index.docs = list(docs)
    index.save(path)
    log(f"indexed {len(docs):,} documents with the {embedder_name} embedder in "
        f"{time.time() - t0:.1f}s -> {shown(path)}")
    return index, embedder

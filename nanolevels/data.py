"""Text -> token files -> training batches; QA pairs -> answer-masked batches.

Pretraining reads random windows of a flat token stream (documents joined by <|endoftext|>),
stored as uint16 and memory-mapped; fine-tuning reads (prompt, answer) turns with the loss on the
answer tokens only. Batches are a pure function of (seed, step, micro_step). Also a data folder's
files: prepare_world and prepare_text write them, the load_* functions read them back.
References: karpathy/nanoGPT (data/*/prepare.py, get_batch in train.py).
"""

import json
import os
import time
from array import array
from dataclasses import asdict
from itertools import chain

import numpy as np
import torch

from nanolevels.files import (atomic_open, atomic_write, read_json, read_jsonl, read_text,
                              write_json, write_jsonl)
from nanolevels.tokenizer import EOT, Tokenizer
from nanolevels.corpus import make_corpus
from nanolevels.world import (ATTRIBUTES, SMALL_WORLD, SPLITS, TWO_HOP, make_world, qa_pair,
                              scored, two_hop_question)

IGNORE = -100  # cross-entropy's ignore_index: positions that add nothing to the loss


def save_tokens(ids, path: str) -> None:
    """Write token ids as uint16 (atomically: a crash never leaves half a file)."""
    ids = np.asarray(ids)
    if ids.size and ids.max() >= 2**16:
        raise ValueError(f"token id {ids.max()} does not fit in uint16; use a vocab under 65536")
    atomic_write(path, ids.astype(np.uint16).tobytes())


def load_tokens(path: str) -> np.ndarray:
    return np.memmap(path, dtype=np.uint16, mode="r")


def encode_documents(tokenizer, docs) -> np.ndarray:
    """One flat stream: each document's tokens followed by <|endoftext|>."""
    ids = array("q")  # 8 bytes a token as it grows (a list of Python ints takes 36)
    for doc in docs:
        ids.extend(tokenizer.encode(doc))
        ids.append(tokenizer.eot_id)
    return np.frombuffer(ids, dtype=np.int64)


def read_documents(path: str):
    """The documents of a pretrain.txt or val.txt (joined by <|endoftext|> lines), one at a time,
    as str.split on the separator gives them (the last keeps the file's final newline)."""
    with open(path, encoding="utf-8") as f:
        lines = []
        for line in f:
            if line == f"{EOT}\n" and lines and lines[-1].endswith("\n"):
                lines[-1] = lines[-1][:-1]  # the separator's first newline
                yield "".join(lines)
                lines = []
            else:
                lines.append(line)
        yield "".join(lines)


def _global_rows(seed: int, step: int, micro_step: int, n_rows: int, high: int) -> np.ndarray:
    """The row indices of one global micro-batch: the same on every rank."""
    # nothing to save for an exact resume; each DDP rank keeps its slice, so N ranks see exactly
    # the samples of one process with an N-times larger batch
    return np.random.default_rng([seed, step, micro_step]).integers(0, high, size=n_rows)


def _rank_slice(rows: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    per_rank = len(rows) // world_size
    return rows[rank * per_rank:(rank + 1) * per_rank]


def get_lm_batch(tokens: np.ndarray, batch_size: int, block_size: int, seed: int, step: int,
                 micro_step: int = 0, rank: int = 0, world_size: int = 1):
    """Random (x, y) windows of the token stream; y is x shifted by one. Shapes (B, block_size)."""
    if len(tokens) <= block_size:
        raise ValueError(f"the data has {len(tokens)} tokens, too few for block size {block_size}; "
                         f"use more text or a smaller --block-size")
    rows = _global_rows(seed, step, micro_step, batch_size * world_size, len(tokens) - block_size)
    starts = _rank_slice(rows, rank, world_size)
    window = np.stack([tokens[s:s + block_size + 1] for s in starts]).astype(np.int64)
    window = torch.from_numpy(window)  # (B, block_size + 1)
    return window[:, :-1], window[:, 1:]


def encode_example(tokenizer, turns, block_size: int):
    """(ids, targets) for one example, a list of (prompt, answer) turns: the model reads ids and is
    trained to predict, at each position, that position's target. E.g. prompt [Q, :, A, :] and
    answer [ Busan, \\n] give ids [eot, Q, :, A, :, Busan], targets [-100 x4, Busan, \\n]."""
    if not turns:
        raise ValueError("an example needs at least one (prompt, answer) turn")
    # <|endoftext|> first, as before every pretraining document and at inference (evaluate.complete)
    ids, targets = [tokenizer.eot_id], []
    for prompt, answer in turns:
        if not prompt or not answer:
            raise ValueError(f"an example needs a non-empty prompt and answer, got {prompt!r} -> "
                             f"{answer!r}")
        # each part encoded separately, exactly as at inference, where the model sees the encoded
        # prompt and writes the answer tokens itself; a later turn's prompt follows the last answer
        p, a = tokenizer.encode(prompt), tokenizer.encode(answer)
        if targets and len(ids) + len(p) + len(a) > block_size + 1:
            break  # too long: whole turns dropped from the END (the first holds the context)
        if len(a) > block_size:
            raise ValueError(f"an answer of {len(a)} tokens does not fit in block size "
                             f"{block_size}")
        ids += p + a
        # a prompt's targets are IGNORE, skipped by cross-entropy: the model learns to answer, not
        # to write questions
        targets += [IGNORE] * len(p) + a
    # the shift: input all tokens but the last, targets all but the first; then the first prompt's
    # START is cut if still too long (its question sits at its end)
    return ids[:-1][-block_size:], targets[-block_size:]


def collate(examples, pad_id: int):
    """Right-pad a list of (ids, targets) into (x, y) tensors of shape (B, longest): after the real
    tokens, causal attention never lets a real position see the padding; its targets are IGNORE."""
    width = max(len(ids) for ids, _ in examples)
    x = torch.full((len(examples), width), pad_id, dtype=torch.long)
    y = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    for i, (ids, targets) in enumerate(examples):
        x[i, :len(ids)] = torch.tensor(ids)
        y[i, :len(targets)] = torch.tensor(targets)
    return x, y


def get_example_batch(examples, batch_size: int, pad_id: int, seed: int, step: int,
                      micro_step: int = 0, rank: int = 0, world_size: int = 1):
    """A random batch of encoded examples (see encode_example), drawn like get_lm_batch."""
    if not examples:
        raise ValueError("the fine-tuning data set is empty")
    rows = _global_rows(seed, step, micro_step, batch_size * world_size, len(examples))
    return collate([examples[i] for i in _rank_slice(rows, rank, world_size)], pad_id)


def _forget(out_dir: str) -> None:
    """Remove meta.json before rewriting a folder: until a new one is written, it is incomplete."""
    meta = os.path.join(out_dir, "meta.json")
    if os.path.exists(meta):
        os.remove(meta)


def load_world(data_dir: str):
    """The World a prepared folder was made from (rebuilt from its meta.json, deterministically)."""
    meta_path = os.path.join(data_dir, "meta.json")
    if not os.path.exists(meta_path):
        raise FileNotFoundError(f"{data_dir} holds no prepared world; run "
                                f"python data/world/prepare.py")
    meta = read_json(meta_path)
    if meta.get("kind") != "world":
        raise ValueError(f"{data_dir} holds your own text, not the tiny world; it has no people or "
                         f"questions")
    return make_world(meta["people"], meta["seed"])


def load_questions(world_dir: str, *splits: str, hops: int = 1) -> dict[str, list[dict]]:
    """{split: its questions} from a prepared world's qa_<split>.jsonl (qa2_ with hops=2): every one
    of train's (they are training data), of another split those of the people it is scored on
    (world.scored: a sample, in a split of more than SCORED_PEOPLE)."""
    out = {}
    for split in splits:
        path = os.path.join(world_dir, f"qa{'' if hops == 1 else hops}_{split}.jsonl")
        if not os.path.exists(path):
            raise FileNotFoundError(f"no {path}; prepare the world with: "
                                    f"python data/world/prepare.py --out {world_dir}")
        questions = read_jsonl(path)
        if split != "train":
            keep = scored(list(dict.fromkeys(q["person"] for q in questions)))
            questions = [q for q in questions if q["person"] in keep]
        out[split] = questions
    return out


def load_documents(world_dir: str) -> list[dict]:
    """The retrieval collection, docs.jsonl: one {"id", "text", ...} object per line, checked here
    so that a damaged file is an error naming it, not a failure deep inside retrieval."""
    path = os.path.join(world_dir, "docs.jsonl")
    if not os.path.exists(path):
        raise FileNotFoundError(f"no documents at {path}; prepare the world with: "
                                f"python data/world/prepare.py --out {world_dir}")
    docs = read_jsonl(path)
    for n, doc in enumerate(docs, 1):
        if not (isinstance(doc, dict) and isinstance(doc.get("id"), str)
                and isinstance(doc.get("text"), str)):
            raise ValueError(f'document {n} of {path} is not {{"id": "...", "text": "..."}}; '
                             f'regenerate the world with: python data/world/prepare.py')
    if not docs:
        raise ValueError(f"{path} holds no documents; regenerate the world with: "
                         f"python data/world/prepare.py")
    return docs


def load_tables(world_dir: str) -> tuple[list[dict], list[dict]]:
    """The world's ground truth: (people.jsonl, companies.jsonl) rows."""
    tables = []
    for name in ("people.jsonl", "companies.jsonl"):
        path = os.path.join(world_dir, name)
        if not os.path.exists(path):
            raise FileNotFoundError(f"no {path}; prepare the world with: "
                                    f"python data/world/prepare.py --out {world_dir}")
        tables.append(read_jsonl(path))
    return tables[0], tables[1]


class DiskList:
    """A list of texts (or, raw, of bytes) kept in a temporary file: append, [i] and len, what
    make_corpus's store needs, so that a big world's millions of pages sit on disk, not in memory.
    The file goes when the `with` block ends."""

    def __init__(self, path: str, raw: bool = False):
        self.path, self.raw = path, raw
        self.file = open(path, "w+b")
        self.offsets = array("q", [0])  # item i is bytes offsets[i]:offsets[i + 1] of the file
        self.unflushed = False

    def append(self, item) -> None:
        data = item if self.raw else item.encode()
        self.file.write(data)
        self.offsets.append(self.offsets[-1] + len(data))
        self.unflushed = True

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int):
        return self.bytes(i) if self.raw else self.bytes(i).decode()

    def bytes(self, i: int) -> bytes:
        """Item i as stored (a text UTF-8 encoded)."""
        if self.unflushed:  # os.pread reads the file, not the write buffer
            self.file.flush()
            self.unflushed = False
        start = self.offsets[i]
        return os.pread(self.file.fileno(), self.offsets[i + 1] - start, start)

    def sizes(self) -> np.ndarray:
        """Each item's length in bytes."""
        return np.diff(np.frombuffer(self.offsets, dtype=np.int64))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.file.close()
        os.remove(self.path)


# A world past SMALL_WORLD people learns its merges from about this much of its distinct text (every
# k-th document): the pair counts of a sample that size rank the merges as the whole would, and the
# step stops growing with the world (a 100,000-person world has 2.5 GB of distinct documents)
TOKENIZER_SAMPLE_BYTES = 64 * 2**20


def last_to_appear(order: np.ndarray, n: int, block: int = 2**20) -> int:
    """Of the ids 0..n-1, each somewhere in order, the one whose first place in order is last."""
    seen, last = np.zeros(n, dtype=bool), -1
    for start in range(0, len(order), block):  # a block at a time: no sorted copy of all of order
        ids = order[start:start + block]
        new, first = np.unique(ids[~seen[ids]], return_index=True)
        if len(new):
            last = int(new[np.argmax(first)])
        seen[ids] = True
    return last


def train_world_tokenizer(corpus, vocab_size: int, people: int) -> Tokenizer:
    """The tokenizer of a world, learned from each distinct pretraining document once (repeats would
    add time, not merges), as if from the text of them all joined by newlines in the order they
    first appear: the newline after each is counted, but for the last to appear."""
    # a document starts with a letter, so no chunk of the split pattern spans two of them
    last = last_to_appear(np.frombuffer(corpus.order, dtype=np.int32), len(corpus.store))
    every = 1 if people <= SMALL_WORLD else -(-int(corpus.store.sizes().sum())
                                             // TOKENIZER_SAMPLE_BYTES)
    texts = (corpus.store[i] + ("" if i == last else "\n")
             for i in range(0, len(corpus.store), every))
    return Tokenizer.train(texts, vocab_size)


def write_pretraining(out_dir: str, corpus, tokenizer) -> tuple[int, int]:
    """pretrain.txt (documents joined by <|endoftext|> lines) and train.bin (each document's tokens,
    then <|endoftext|>), written as they are made: each distinct document is encoded once, its
    tokens kept on disk, and both files follow corpus.order. Returns (tokens, text bytes)."""
    if tokenizer.vocab_size > 2**16:
        raise ValueError(f"{tokenizer.vocab_size} tokens do not fit in uint16; use a vocab under "
                         f"65536")
    eot = np.array([tokenizer.eot_id], dtype=np.uint16).tobytes()
    join = f"\n{EOT}\n".encode()
    with DiskList(os.path.join(out_dir, f"tokens.{os.getpid()}.tmp"), raw=True) as tokens:
        for i in range(len(corpus.store)):
            tokens.append(np.array(tokenizer.encode(corpus.store[i]), dtype=np.uint16).tobytes())
        with (atomic_open(os.path.join(out_dir, "pretrain.txt")) as text,
              atomic_open(os.path.join(out_dir, "train.bin")) as ids):
            for n, i in enumerate(corpus.order):
                text.write(join + corpus.store.bytes(i) if n else corpus.store.bytes(i))
                ids.write(tokens[i] + eot)
            text.write(b"\n")
        order = np.frombuffer(corpus.order, dtype=np.int32)
        n_tokens = int(tokens.sizes()[order].sum()) // 2 + len(order)
    return n_tokens, int(corpus.store.sizes()[order].sum())


def _write_tokenized(out_dir: str, train_text: str, train_docs, val_docs, vocab_size: int, log):
    """Train the tokenizer on train_text, then write tokenizer.json, train.bin and val.bin."""
    t0 = time.time()
    tokenizer = Tokenizer.train(train_text, vocab_size)
    train_s = time.time() - t0
    tokenizer.save(os.path.join(out_dir, "tokenizer.json"))
    train_ids = encode_documents(tokenizer, train_docs)
    val_ids = encode_documents(tokenizer, val_docs)
    save_tokens(train_ids, os.path.join(out_dir, "train.bin"))
    save_tokens(val_ids, os.path.join(out_dir, "val.bin"))
    n_bytes = sum(len(d.encode()) for d in train_docs)  # text only: <|endoftext|> is one token
    log(f"tokenizer: {tokenizer.vocab_size} tokens trained in {train_s:.1f}s; "
        f"train.bin {len(train_ids):,} tokens ({n_bytes / len(train_ids):.2f} bytes/token), "
        f"val.bin {len(val_ids):,} tokens")
    return {"vocab_size": tokenizer.vocab_size, "train_tokens": len(train_ids),
            "val_tokens": len(val_ids), "tokenizer_train_s": train_s}


def write_collection(out_dir: str, world, corpus) -> None:
    """The retrieval collection (docs.jsonl), every split's questions and the world's tables."""
    # every biography and profile, dev-new and new included; a document names its "person" or its
    # "company"
    write_jsonl(os.path.join(out_dir, "docs.jsonl"), chain(
        ({"id": f"{p.name}#{i}", "person": p.name, "split": p.split, "text": bio}
         for p in world.people for i, bio in enumerate(corpus.bios[p.name])),
        ({"id": f"{c.name}#{i}", "company": c.name, "split": c.split, "text": text}
         for c in world.companies for i, text in enumerate(corpus.profiles[c.name]))))
    for split in SPLITS:  # one-hop questions, and two-hop ones through each person's employer
        people = world.split(split)
        write_jsonl(os.path.join(out_dir, f"qa_{split}.jsonl"),
                    (qa_pair(p, a) for p in people for a in ATTRIBUTES))
        write_jsonl(os.path.join(out_dir, f"qa2_{split}.jsonl"),
                    (two_hop_question(p, world.company(p.employer), a)
                     for p in people for a in TWO_HOP))
    write_jsonl(os.path.join(out_dir, "people.jsonl"), (asdict(p) for p in world.people))
    write_jsonl(os.path.join(out_dir, "companies.jsonl"), (asdict(c) for c in world.companies))


def prepare_world(out_dir: str = "data/world", people: int = 340, bios_per_person: int = 5,
                  epochs: int = 40, reading_share: float = 0.2, mix_qa: bool = False,
                  vocab_size: int = 2048, seed: int = 1337, log=print) -> dict:
    """Write the tiny world's files into out_dir (see each write below) and return a summary."""
    world = make_world(people, seed)
    _forget(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    with DiskList(os.path.join(out_dir, f"documents.{os.getpid()}.tmp")) as store:
        corpus = make_corpus(world, bios_per_person, epochs, reading_share, mix_qa, store)
        write_collection(out_dir, world, corpus)
        join = f"\n{EOT}\n"  # documents separated by <|endoftext|> lines
        train_chars = corpus.chars + len(join) * (len(corpus.order) - 1)
        log("world: " + " / ".join(f"{len(world.split(s))} {s}" for s in SPLITS) + " people at "
            + " / ".join(f"{sum(c.split == s for c in world.companies)} {s}"
                         for s in ("known", "dev-new", "new"))
            + " companies; "
            f"{len(corpus.order):,} pretraining documents ({train_chars:,} chars; "
            f"{corpus.n_pages:,} of them reading pages, {corpus.n_traces:,} agent "
            f"traces), {len(corpus.val_docs):,} validation documents")
        t0 = time.time()
        tokenizer = train_world_tokenizer(corpus, vocab_size, people)
        train_s = time.time() - t0
        tokenizer.save(os.path.join(out_dir, "tokenizer.json"))
        n_tokens, n_bytes = write_pretraining(out_dir, corpus, tokenizer)
    atomic_write(os.path.join(out_dir, "val.txt"), join.join(corpus.val_docs) + "\n")
    val_ids = encode_documents(tokenizer, corpus.val_docs)
    save_tokens(val_ids, os.path.join(out_dir, "val.bin"))
    log(f"tokenizer: {tokenizer.vocab_size} tokens trained in {train_s:.1f}s; "
        f"train.bin {n_tokens:,} tokens ({n_bytes / n_tokens:.2f} bytes/token), "
        f"val.bin {len(val_ids):,} tokens")
    meta = {"kind": "world", "people": people, "bios_per_person": bios_per_person,
            "epochs": epochs, "reading_share": reading_share, "mix_qa": mix_qa,
            "vocab_size": vocab_size, "seed": seed}
    write_json(os.path.join(out_dir, "meta.json"), meta)  # last: its presence means all is written
    return {**meta, "vocab_size": tokenizer.vocab_size, "train_tokens": n_tokens,
            "val_tokens": len(val_ids), "tokenizer_train_s": train_s, "train_chars": train_chars}


def prepare_text(path: str, out_dir: str, vocab_size: int = 2048, val_fraction: float = 0.1,
                 log=print) -> dict:
    """Any plain text file as the pretraining corpus: split its tail off as validation text (at a
    line break), train a tokenizer on the rest, and write the same files as prepare_world (less the
    world's): pretrain.txt, val.txt, tokenizer.json, train.bin, val.bin, meta.json."""
    try:
        text = read_text(path)  # not UTF-8: an error naming the line
    except OSError as e:
        raise ValueError(f"cannot read {path}: {e}; give a UTF-8 text file") from None
    if not text.strip():
        raise ValueError(f"{path} is empty; give a text file with something to learn from")
    _forget(out_dir)
    cut = int(len(text) * (1 - val_fraction))
    cut = text.rfind("\n", 0, cut) + 1 or cut
    atomic_write(os.path.join(out_dir, "pretrain.txt"), text[:cut])
    atomic_write(os.path.join(out_dir, "val.txt"), text[cut:])
    summary = _write_tokenized(out_dir, text[:cut], [text[:cut]], [text[cut:]], vocab_size, log)
    meta = {"kind": "text", "source": os.path.abspath(path), "vocab_size": vocab_size}
    write_json(os.path.join(out_dir, "meta.json"), meta)
    return {**meta, **summary, "train_chars": cut}


def load_pretraining_data(data_dir: str, tokenizer=None):
    """(tokenizer, train tokens, val tokens) of a prepared folder: its own tokenizer and token
    files, or, given another tokenizer (GPT-2's, for a model from GPT-2), its text encoded so."""
    if not os.path.exists(os.path.join(data_dir, "meta.json")):
        raise FileNotFoundError(f"{data_dir} holds no prepared data; run "
                                f"python data/world/prepare.py")
    own = Tokenizer.load(os.path.join(data_dir, "tokenizer.json"))
    if tokenizer is None or tokenizer.to_dict() == own.to_dict():
        return (own, load_tokens(os.path.join(data_dir, "train.bin")),
                load_tokens(os.path.join(data_dir, "val.bin")))
    streams = [encode_documents(tokenizer, read_documents(os.path.join(data_dir, name)))
               for name in ("pretrain.txt", "val.txt")]
    return tokenizer, *streams


def read_pairs(path: str) -> list[dict]:
    """A JSONL file of {"prompt": str, "answer": str} lines (a fine-tuning set), checked by line."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"no fine-tuning data at {path}")
    pairs = []
    for n, line in enumerate(read_text(path).split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if not (isinstance(row, dict) and isinstance(row.get("prompt"), str)
                and isinstance(row.get("answer"), str) and row["prompt"] and row["answer"]):
            raise ValueError(f'line {n} of {path} is not {{"prompt": "...", "answer": "..."}} with '
                             f'non-empty strings')
        pairs.append(row)
    if not pairs:
        raise ValueError(f"{path} holds no examples; give one JSON object per line")
    return pairs


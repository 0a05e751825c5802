"""Batches: shifted targets, determinism, DDP slicing; answer masking; prepared text files."""

import os

import numpy as np
import pytest
import torch

from nanolevels import data
from nanolevels.data import IGNORE
from nanolevels.tokenizer import EOT, Tokenizer


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.train("Q: What is the birth city of Ada Jo Crane?\nA: Lyon\n" * 20, 300)


def test_lm_batch_shift_determinism_and_rank_slices():
    tokens = np.arange(1000) % 997
    x, y = data.get_lm_batch(tokens, 4, 8, seed=1, step=3)
    assert x.shape == y.shape == (4, 8)
    assert torch.equal(x[:, 1:], y[:, :-1])
    x2, _ = data.get_lm_batch(tokens, 4, 8, seed=1, step=3)
    assert torch.equal(x, x2)
    assert not torch.equal(x, data.get_lm_batch(tokens, 4, 8, seed=1, step=4)[0])
    # two ranks of batch 2 see exactly the global batch of one process with batch 4
    parts = [data.get_lm_batch(tokens, 2, 8, 1, 3, rank=r, world_size=2)[0] for r in range(2)]
    assert torch.equal(torch.cat(parts), x)


def test_lm_batch_too_little_data():
    with pytest.raises(ValueError, match="block size"):
        data.get_lm_batch(np.arange(8), 2, 8, seed=0, step=0)


def test_encode_example_masks_prompt(tok):
    prompt, answer = "Q: What is the birth city of Ada Jo Crane?\nA:", " Lyon\n"
    ids, targets = data.encode_example(tok, [(prompt, answer)], block_size=64)
    p, a = [tok.eot_id] + tok.encode(prompt), tok.encode(answer)  # prompts start like documents
    assert ids == (p + a)[:-1]
    assert targets == [IGNORE] * (len(p) - 1) + a
    # too long for the block: the prompt's start is dropped, the answer is kept whole
    ids, targets = data.encode_example(tok, [(prompt, answer)], block_size=len(a) + 3)
    assert len(ids) == len(targets) == len(a) + 3
    assert targets[-len(a):] == a and ids[-(len(a) - 1):] == a[:-1]
    with pytest.raises(ValueError):
        data.encode_example(tok, [("", answer)], 64)
    ids, targets = data.encode_example(tok, [(prompt, answer)], block_size=len(a))  # the answer alone fills the block
    assert targets == a and len(ids) == len(a)
    with pytest.raises(ValueError, match="does not fit"):
        data.encode_example(tok, [(prompt, answer)], block_size=len(a) - 1)


def test_encode_example_several_turns(tok):
    turns = [("Ada was born in Lyon.\nQ: Where?\nA:", " Lyon\n"), ("Q: Who?\nA:", " Ada\n")]
    ids, targets = data.encode_example(tok, turns, block_size=64)
    parts = [tok.encode(t) for turn in turns for t in turn]
    assert ids == ([tok.eot_id] + sum(parts, []))[:-1]
    assert targets == [IGNORE] * len(parts[0]) + parts[1] + [IGNORE] * len(parts[2]) + parts[3]
    # every answer target is the next token of ids
    assert all(t == ids[i + 1] for i, t in enumerate(targets[:-1]) if t != IGNORE)
    # too long: the last turn goes whole, the first (with the context) stays
    first = 1 + len(parts[0]) + len(parts[1])
    assert data.encode_example(tok, turns, block_size=first + 2) == data.encode_example(tok, turns[:1], 64)
    with pytest.raises(ValueError, match="at least one"):
        data.encode_example(tok, [], 64)


def test_collate_pads_right_with_ignored_targets(tok):
    ex = [data.encode_example(tok, [("Q: a?\nA:", " Lyon\n")], 64), data.encode_example(tok, [("Q: longer one?\nA:", " x\n")], 64)]
    x, y = data.collate(ex, pad_id=tok.eot_id)
    n0 = len(ex[0][0])
    assert x.shape[1] == max(len(e[0]) for e in ex)
    assert (x[0, n0:] == tok.eot_id).all() and (y[0, n0:] == IGNORE).all()
    batch = data.get_example_batch(ex, 3, tok.eot_id, seed=0, step=0)
    assert batch[0].shape[0] == 3


def test_tokens_round_trip(tmp_path):
    path = str(tmp_path / "t.bin")
    data.save_tokens([1, 2, 65535], path)
    assert data.load_tokens(path).tolist() == [1, 2, 65535]
    with pytest.raises(ValueError):
        data.save_tokens([65536], path)


def test_prepare_text(tmp_path):
    src = tmp_path / "my.txt"
    src.write_text("".join(f"line {i}: the quick brown fox jumps over the lazy dog.\n" for i in range(200)))
    out = tmp_path / "prep"
    summary = data.prepare_text(str(src), str(out), vocab_size=300, log=lambda *a: None)
    tok, train, val = data.load_pretraining_data(str(out))
    assert tok.vocab_size == summary["vocab_size"] and len(train) > len(val) > 0
    assert tok.decode(train.tolist()).startswith("line 0:")
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    with pytest.raises(ValueError, match="empty"):
        data.prepare_text(str(empty), str(out))
    with pytest.raises(ValueError, match="cannot read"):
        data.prepare_text(str(tmp_path / "missing.txt"), str(out))
    (tmp_path / "bin.txt").write_bytes(b"line one\nline two\n\xff\xfe\x00")
    with pytest.raises(ValueError, match="line 3 of .*bin.txt is not UTF-8"):
        data.prepare_text(str(tmp_path / "bin.txt"), str(out))
    with pytest.raises(FileNotFoundError):
        data.load_pretraining_data(str(tmp_path / "nothing"))


def test_shown_paths_are_relative_inside_the_working_directory(tmp_path, monkeypatch):
    from nanolevels.files import shown
    monkeypatch.chdir(tmp_path)
    assert shown(str(tmp_path / "data" / "world")) == os.path.join("data", "world")
    assert shown("/elsewhere/world") == "/elsewhere/world" and shown("out/x") == "out/x" and shown("--seed") == "--seed"


def test_read_documents_splits_like_the_separator(tmp_path):
    text = (f"Ada was born.\n{EOT}\nQ: a?\nA: b\n\n{EOT}\n{EOT}\nlast\nlines\n\n"
            f"{EOT} in a line\nend\n")
    path = tmp_path / "pretrain.txt"
    path.write_text(text)
    docs = list(data.read_documents(str(path)))
    assert docs == text.split(f"\n{EOT}\n") and len(docs) == 3
    path.write_text("")
    assert list(data.read_documents(str(path))) == [""]


def test_last_to_appear():
    order = np.array([3, 1, 3, 0, 1, 2, 0, 2])
    assert data.last_to_appear(order, 4) == 2
    assert all(data.last_to_appear(order, 4, block=b) == 2 for b in (1, 2, 3, 5))
    rng = np.random.default_rng(0)
    order = rng.permutation(np.repeat(np.arange(50), 3))
    _, first = np.unique(order, return_index=True)
    assert data.last_to_appear(order, 50, block=7) == int(np.argmax(first))

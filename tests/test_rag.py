"""rag.py and the RAG prompt: documents fitted into the block, the index cached, metrics, errors."""

import json
import os
import subprocess
import sys

import pytest

from nanolevels.prompting import rag_prompt
from nanolevels.tokenizer import Tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def rag(*args):
    return subprocess.run([sys.executable, "rag.py", *args], cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=300)


def test_rag_prompt_puts_best_last_and_drops_lowest_ranked_first():
    tok = Tokenizer.train("some words for a tokenizer " * 20, 270)
    docs = ["Best doc.", "Second doc.", "Third doc that is rather long " * 3]
    prompt, dropped = rag_prompt("Who?", docs, tok, budget=10_000)
    assert dropped == 0 and prompt.startswith(docs[2]) and prompt.endswith("Best doc.\nQ: Who?\nA:")
    small = len(tok.encode(rag_prompt("Who?", docs[:2], tok, 10_000)[0])) + 1
    prompt, dropped = rag_prompt("Who?", docs, tok, budget=small)
    assert dropped == 1 and prompt == "Second doc.\nBest doc.\nQ: Who?\nA:"
    prompt, dropped = rag_prompt("Who?", docs, tok, budget=1)
    assert dropped == 2 and prompt == "Best doc.\nQ: Who?\nA:"


def test_eval_writes_metrics_and_caches_the_index(tiny_run, tmp_path):
    out = str(tmp_path / "rag")
    args = ["--eval", "--checkpoint", tiny_run["checkpoint"], "--world", tiny_run["world"], "--out", out]
    r = rag(*args)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("indexed") == 2  # one index per embedder
    m = json.load(open(os.path.join(out, "metrics.json")))
    assert set(m["acc"]) == {"test", "new"} and set(m["retrieval"]) == {"tfidf", "gpt"}
    assert m["retrieval"]["tfidf"]["new"]["recall@1"] >= 0.9
    assert m["query_latency_ms"] > 0
    again = rag(*args)
    assert again.returncode == 0 and "indexed" not in again.stdout
    assert json.load(open(os.path.join(out, "metrics.json")))["acc"] == m["acc"]


def test_question_prints_documents_and_answer(tiny_run, tmp_path):
    person = json.loads(open(os.path.join(tiny_run["world"], "qa_new.jsonl")).readline())
    r = rag(person["question"], "--checkpoint", tiny_run["checkpoint"], "--world", tiny_run["world"],
            "--out", str(tmp_path), "--k", "3")
    assert r.returncode == 0, r.stderr
    ranked = [line for line in r.stdout.splitlines() if line.startswith("[")]
    assert len(ranked) == 3 and ranked[0].startswith("[1]") and person["person"] in ranked[0]
    assert "answer:" in r.stdout


@pytest.mark.parametrize("args, message", [
    (["  "], "empty"), ([], "--eval"), (["Who?", "--k", "0"], "--k"),
    (["Who?", "--checkpoint", "missing.safetensors"], "train_pretrain.py"),
    (["Who?", "--world", "no/world"], "prepare.py"),
])
def test_user_errors(tiny_run, tmp_path, args, message):
    if "--checkpoint" not in args:
        args = [*args, "--checkpoint", tiny_run["checkpoint"]]
    if "--world" not in args:
        args = [*args, "--world", tiny_run["world"]]
    r = rag(*args, "--out", str(tmp_path))
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stderr

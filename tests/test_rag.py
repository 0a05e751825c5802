"""rag.py and the RAG prompt: documents fitted into the block, the index cached, metrics, errors."""

import json
import os
import shutil
import subprocess
import sys

import pytest

import rag as rag_script
from nanolevels import provenance
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
    first = json.loads(open(os.path.join(tiny_run["world"], "qa_new.jsonl")).readline())
    example = m["example"]["new"]  # the first question's real answer, for the report card
    assert (example["question"], example["answer"]) == (first["question"], first["answer"])
    assert isinstance(example["prediction"], str) and set(m["example"]) == {"test", "new"}
    assert m["retrieval"]["tfidf"]["new"]["recall@1"] >= 0.9
    assert m["query_latency_ms"] > 0
    assert m["fingerprints"] == {"model": provenance.checkpoint(tiny_run["checkpoint"])}  # the model these numbers are of
    # everyone asked about in test and new is in the collection: few answers may be marked a guess
    assert 0 <= m["unsure"]["guesses"]["new"] <= 3 and m["unsure"]["made_up_caught"] >= 0.9
    assert "answers marked a guess" in r.stdout
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
    assert "answer: " in r.stdout and "guess" not in r.stdout and "best match" in r.stdout


def test_a_question_about_nobody_in_the_collection_is_marked_a_guess(tiny_run, tmp_path, run_main):
    code, out, err = run_main(rag_script.main, "What is the birth city of Zebulon Quincy Marchetti?",
                              "--checkpoint", tiny_run["checkpoint"], "--world", tiny_run["world"],
                              "--out", str(tmp_path))
    assert code == 0, err
    assert "nothing in the collection seems to be about this, so the answer is a guess" in out
    assert "\nanswer (a guess): " in out


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


def damaged_world(world, tmp, damage):
    """A copy of the tiny world whose docs.jsonl is damaged by damage(path)."""
    copy = str(tmp / "world")
    shutil.copytree(world, copy)
    damage(os.path.join(copy, "docs.jsonl"))
    return copy


def append(path, data: bytes):
    with open(path, "ab") as f:
        f.write(data)


@pytest.mark.parametrize("make_args, message", [
    (lambda world, tmp: ["--demos", "-1"], "--demos must be at least 0"),
    (lambda world, tmp: ["--demos", "100000"], "--demos 100000 is more than the"),
    (lambda world, tmp: ["--demos", "12"], "leave no room for a document"),
    (lambda world, tmp: ["--world", damaged_world(world, tmp, lambda p: append(p, b"{not json\n"))], "is not JSON"),
    (lambda world, tmp: ["--world", damaged_world(world, tmp, lambda p: append(p, "caf\u00e9\n".encode("latin-1")))],
     "is not UTF-8"),
    (lambda world, tmp: ["--world", damaged_world(world, tmp, lambda p: append(p, b'{"id": "x"}\n'))],
     'is not {"id": "...", "text": "..."}'),
])
def test_more_user_errors_are_one_line(tiny_run, tmp_path, run_main, make_args, message):
    args = make_args(tiny_run["world"], tmp_path)
    if "--world" not in args:
        args += ["--world", tiny_run["world"]]
    code, _, err = run_main(rag_script.main, "Who?", "--checkpoint", tiny_run["checkpoint"], "--out", str(tmp_path),
                            *args)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    if "--demos" not in args:
        docs = os.path.join(args[-1], "docs.jsonl")
        lines = sum(1 for _ in open(docs, "rb"))  # the damage is on the last line
        assert f"of {docs}" in err and (f"line {lines}" in err or f"document {lines}" in err)



def test_agentic_prints_the_trace_and_scores_two_hop_questions(tiny_run, tmp_path):
    import train_lora
    agent = str(tmp_path / "agent")
    train_lora.main(["--task", "agent", "--init-adapter", "none", "--examples", "20", "--checkpoint",
                     tiny_run["checkpoint"], "--world", tiny_run["world"], "--out", agent, "--rag-out",
                     str(tmp_path / "rag"), "--max-steps", "2", "--batch-size", "2", "--eval-interval", "2",
                     "--eval-batches", "1", "--device", "cpu"])
    question = json.loads(open(os.path.join(tiny_run["world"], "qa2_new.jsonl")).readline())["question"]
    common = ["--checkpoint", tiny_run["checkpoint"], "--world", tiny_run["world"], "--out", str(tmp_path / "rag"),
              "--adapter", os.path.join(agent, "adapter.safetensors")]
    r = rag("--agentic", question, "--eval", *common)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"Q: {question}\n")  # the trace, as it grows, then the scores
    assert "agentic test: exact match" in r.stdout and "agentic new: exact match" in r.stdout
    m = json.load(open(tmp_path / "rag" / "agentic.json"))
    assert m["k"] == 1 and {"acc", "calls", "recall_both", "gap", "ended"} <= set(m["new"])
    for extra, message in [(["--demos", "1"], "--demos are for plain RAG"),
                           (["--adapter", str(tmp_path / "none.safetensors")], "no LoRA adapter at")]:
        r = rag("--agentic", question, *common, *extra)
        assert r.returncode == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr

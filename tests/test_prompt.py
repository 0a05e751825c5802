"""prompt.py: generation, streaming loop, --eval table, and one-line errors."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def prompt(*args, stdin=None):
    return subprocess.run([sys.executable, "prompt.py", *args], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, input=stdin, timeout=300)


def test_generate_is_seeded_and_greedy_is_deterministic(tiny_run):
    args = ["Ada", "--checkpoint", tiny_run["checkpoint"], "--max-new-tokens", "12", "--device", "cpu"]
    a, b = prompt(*args, "--seed", "1"), prompt(*args, "--seed", "1")
    assert a.returncode == 0, a.stderr
    assert a.stdout == b.stdout and a.stdout.startswith("Ada")
    g1 = prompt(*args, "--temperature", "0", "--seed", "1")
    g2 = prompt(*args, "--temperature", "-1", "--seed", "2")
    assert g1.stdout == g2.stdout


def test_interactive_reads_until_eof(tiny_run):
    r = prompt("--interactive", "--checkpoint", tiny_run["checkpoint"], "--max-new-tokens", "3",
               stdin="Ada\n\nBo\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("> ") == 4 and "Ada" in r.stdout and "Bo" in r.stdout


def test_long_prompt_is_cut_with_one_note(tiny_run):
    r = prompt("word " * 200, "--checkpoint", tiny_run["checkpoint"], "--max-new-tokens", "2")
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("the model sees only the last 64") == 1


def test_eval_writes_every_row(tiny_run, tmp_path):
    out = str(tmp_path / "prompt")
    r = prompt("--eval", "--checkpoint", tiny_run["checkpoint"], "--world", tiny_run["world"], "--out", out)
    assert r.returncode == 0, r.stderr
    m = json.load(open(os.path.join(out, "metrics.json")))
    assert set(m["acc"]) == {"zero-shot", "1-shot", "3-shot", "5-shot", "searched-demos"}
    assert all(set(row) == {"test", "new"} and 0 <= row["test"] <= 1 for row in m["acc"].values())
    assert m["search"]["best_dev"] == max(m["search"]["dev_scores"])


@pytest.mark.parametrize("args, message", [
    (["   "], "empty"),
    (["x", "--top-p", "1.5"], "--top-p"),
    (["x", "--top-p", "0"], "--top-p"),
    ([], "give a prompt"),
    (["x", "--checkpoint", "nope.safetensors"], "python train_pretrain.py"),
    (["x", "--adapter", "nope.safetensors"], "python train_lora.py"),
])
def test_user_errors(tiny_run, args, message):
    if "--checkpoint" not in args:
        args = [*args, "--checkpoint", tiny_run["checkpoint"]]
    r = prompt(*args)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stderr

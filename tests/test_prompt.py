"""prompt.py: generation, streaming loop, --eval table, and one-line errors."""

import json
import os
import re
import subprocess
import sys

import pytest

import prompt as prompt_script
from nanolevels import provenance
from nanolevels.world import make_world

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
    g2 = prompt(*args, "--temperature", "0", "--seed", "2")
    tiny = prompt(*args, "--temperature", "1e-45", "--seed", "3")  # logits / 1e-45 would overflow
    assert g1.stdout == g2.stdout == tiny.stdout and tiny.returncode == 0, tiny.stderr


def test_interactive_reads_until_eof(tiny_run):
    r = prompt("--interactive", "--checkpoint", tiny_run["checkpoint"], "--max-new-tokens", "3",
               stdin="Ada\n\nBo\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("> ") == 4 and "Ada" in r.stdout and "Bo" in r.stdout


def test_long_prompt_is_cut_with_one_note(tiny_run):
    r = prompt("word " * 200, "--checkpoint", tiny_run["checkpoint"], "--max-new-tokens", "2")
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("the model sees only the last 64") == 1


def test_eval_writes_every_row_and_ask_runs_the_program(tiny_run, tmp_path):
    out = str(tmp_path / "prompt")
    common = ["--checkpoint", tiny_run["checkpoint"], "--world", tiny_run["world"], "--out", out]
    r = prompt("--eval", *common)
    assert r.returncode == 0, r.stderr
    assert "compiled program" in r.stdout and "dev" in r.stdout
    m = json.load(open(os.path.join(out, "metrics.json")))
    assert set(m["acc"]) == {"zero-shot", "1-shot", "3-shot", "searched-demos", "prompt-program"}
    assert all(set(row) == {"dev", "test", "new"} and 0 <= row["test"] <= 1 for row in m["acc"].values())
    first = json.loads(open(os.path.join(tiny_run["world"], "qa_test.jsonl")).readline())
    assert set(m["example"]) == set(m["acc"]) and all(  # each method's real answer to the first question
        e["test"]["question"] == first["question"] and isinstance(e["new"]["prediction"], str)
        for e in m["example"].values())
    assert m["search"]["best_dev"] == max(m["search"]["dev_scores"]) == m["acc"]["searched-demos"]["dev"]
    assert m["fingerprints"] == {"model": provenance.checkpoint(tiny_run["checkpoint"])}  # the model these numbers are of
    program = json.load(open(os.path.join(out, "program.json")))
    assert {a: e["prompts"][0]["template"] for a, e in program["attributes"].items()} == {
        a: e["template"] for a, e in m["program"].items()}

    person = json.loads(open(os.path.join(tiny_run["world"], "qa_test.jsonl")).readline())["person"]
    r = prompt("--ask", f"Where was {person} born?", "--verbose", *common)
    assert r.returncode == 0, r.stderr
    assert "prompt: " in r.stdout and person in r.stdout
    r = prompt("--ask", "Who is the king of France?", *common)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "What did <name> study?" in r.stderr, r.stderr
    r = prompt("--ask", "Who is the king of France?", "--raw", "--verbose", *common)
    assert r.returncode == 0 and r.stdout.startswith("prompt: 'Q: Who is the king of France?\\nA:'"), r.stderr
    open(os.path.join(out, "program.json"), "w").write("{")
    r = prompt("--ask", f"Where was {person} born?", *common)
    assert r.returncode == 2 and "recompile it with: python prompt.py --eval" in r.stderr, r.stderr


@pytest.mark.parametrize("args, message", [
    (["   "], "empty"),
    (["x", "--top-p", "1.5"], "--top-p"),
    (["x", "--top-p", "0"], "--top-p"),
    ([], "give a prompt"),
    (["x", "--raw"], "--ask"),
    (["x", "--checkpoint", "nope.safetensors"], "python train_pretrain.py"),
    (["x", "--adapter", "nope.safetensors"], "python train_lora.py"),
])
def test_user_errors(tiny_run, args, message):
    if "--checkpoint" not in args:
        args = [*args, "--checkpoint", tiny_run["checkpoint"]]
    r = prompt(*args)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stderr


@pytest.mark.parametrize("args, message", [
    (["--temperature", "nan"], "--temperature must be 0 (greedy) or a positive number"),
    (["--temperature", "inf"], "--temperature must be 0 (greedy) or a positive number"),
    (["--temperature", "-1"], "--temperature must be 0 (greedy) or a positive number"),
    (["--max-new-tokens", "-5"], "--max-new-tokens must be at least 1, got -5"),
    (["--threads", "-1"], "--threads must be at least 1"),
])
def test_bad_numbers_are_one_line(tiny_run, run_main, args, message):
    code, out, err = run_main(prompt_script.main, "Ada", "--checkpoint", tiny_run["checkpoint"], *args)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1 and not out, err


def test_help_examples_name_test_people_of_the_default_world():
    people = {p.name: p.split for p in make_world().people}  # data/world/prepare.py's defaults
    named = set(re.findall(r"[A-Z][a-z]+ [A-Z][a-z]+ [A-Z][a-z]+", open(prompt_script.__file__).read()))
    assert named and all(people.get(name) == "test" for name in named), named

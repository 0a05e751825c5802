"""train_pretrain.py end to end at a tiny size: artefacts, metrics, resume, DDP == one process,
Ctrl-C, your own text, no silent overwrite, and one-line errors (exit 2) for user mistakes."""

import json
import os
import signal
import socket
import subprocess
import sys

import pytest

import train_pretrain
from nanolevels import data, provenance
from nanolevels.checkpoint import load_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "32", "--batch-size", "4",
        "--eval-interval", "2", "--eval-batches", "1", "--log-interval", "1", "--device", "cpu"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    data.prepare_world(str(out), people=12, bios_per_person=2, epochs=3, vocab_size=300, seed=3, log=lambda *a: None)
    return str(out)


def pretrain(*args, cmd=(sys.executable, "train_pretrain.py")):
    return subprocess.run([*cmd, *args], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)


def losses(out):
    with open(os.path.join(out, "log.jsonl")) as f:
        return [row["loss"] for row in map(json.loads, f) if "loss" in row]


def test_pretrain_writes_everything(world, tmp_path):
    out = str(tmp_path / "run")
    r = pretrain("--world", world, "--out", out, "--max-steps", "4", *TINY)
    assert r.returncode == 0, r.stderr
    assert "step 4/4" in r.stdout and "sample:" in r.stdout
    assert {"model.safetensors", "train_state.safetensors", "log.jsonl", "metrics.json"} <= set(os.listdir(out))
    m = json.load(open(os.path.join(out, "metrics.json")))
    for key in ("params", "tokens_seen", "wall_s", "tokens_per_s", "train_loss", "val_loss"):
        assert key in m
    assert set(m["cloze_acc"]) == {"train", "dev", "test", "dev-new", "new"}
    assert m["stopped"] == "the step cap (--max-steps 4)"
    assert m["tokens_seen"] == 4 * 4 * 32


def test_ddp_two_ranks_match_one_process(world, tmp_path):
    """2 CPU ranks under gloo with batch 2 each == 1 process with batch 4: same losses."""
    single = str(tmp_path / "single")
    r = pretrain("--world", world, "--out", single, "--max-steps", "3", *TINY)
    assert r.returncode == 0, r.stderr
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ddp = str(tmp_path / "ddp")
    args = ["--world", world, "--out", ddp, "--max-steps", "3", *TINY, "--batch-size", "2"]
    r = pretrain(*args, cmd=(sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                             "--master_addr=127.0.0.1", f"--master_port={port}", "train_pretrain.py"))
    assert r.returncode == 0, r.stderr
    assert losses(ddp) == pytest.approx(losses(single), abs=1e-5)
    assert json.load(open(os.path.join(ddp, "metrics.json")))["tokens_seen"] == 3 * 4 * 32


def test_ctrl_c_saves_and_resume_finishes(world, tmp_path):
    out = str(tmp_path / "run")
    p = subprocess.Popen([sys.executable, "train_pretrain.py", "--world", world, "--out", out,
                          "--max-steps", "100000", *TINY], cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    for line in p.stdout:
        if line.startswith("step 3/"):
            break
    p.send_signal(signal.SIGINT)
    stdout, stderr = p.communicate(timeout=60)
    assert p.returncode == 130, stderr
    assert "continue with --resume" in stdout
    step = json.loads(open(os.path.join(out, "log.jsonl")).read().splitlines()[-1])["step"]
    assert step >= 3
    r = pretrain("--world", world, "--out", out, "--max-steps", str(step + 2), "--resume", *TINY)
    assert r.returncode == 0, r.stderr
    assert f"resuming from step {step}" in r.stdout and f"step {step + 2}/{step + 2}" in r.stdout


def test_own_text(tmp_path):
    text = tmp_path / "my.txt"
    text.write_text("".join(f"Line {i}: a small text of my own, with words that repeat.\n" for i in range(300)))
    out = str(tmp_path / "run")
    r = pretrain("--data", str(text), "--out", out, "--max-steps", "2", "--vocab-size", "280", *TINY)
    assert r.returncode == 0, r.stderr
    assert "cloze_acc" not in json.load(open(os.path.join(out, "metrics.json")))
    assert "tokenizer:" in r.stdout
    # resuming trains on the text prepared then (no second tokenizer), even if the file has changed
    text.write_text("Something else entirely. " * 400)
    r = pretrain("--data", str(text), "--out", out, "--max-steps", "3", "--vocab-size", "280", "--resume", *TINY)
    assert r.returncode == 0, r.stderr
    assert "tokenizer:" not in r.stdout and "resuming on the text prepared in" in r.stdout
    assert "resuming from step 2" in r.stdout


@pytest.mark.parametrize("args, message", [
    (["--data", "no/such/file.txt"], "cannot read"),
    (["--device", "cuda"], "no CUDA"),
    (["--resume"], "nothing to resume"),
    (["--block-size", "100000"], "too few for block size"),
    (["--dtype", "float16"], "float16"),
    (["--eval-interval", "0"], "--eval-interval must be at least 1"),
    (["--min-lr", "nan"], "--min-lr must be a number >= 0, got nan"),
    (["--lr", "inf"], "--lr must be a positive number, got inf"),
    (["--weight-decay", "nan"], "--weight-decay must be a number >= 0"),
    (["--beta2", "1"], "--beta2 must be in [0, 1)"),
    (["--warmup-steps", "-5"], "--warmup-steps must be 0 or more, got -5"),
    (["--stop-cloze", "nan"], "--stop-cloze must be above 0"),
    (["--stop-reading", "nan"], "--stop-reading must be 0 or more"),
    (["--world", "train_pretrain.py"], "is a file; give the folder of a prepared world"),
    (["--out", "train_pretrain.py"], "is a file, not a folder"),
])
def test_user_errors_are_one_line(world, tmp_path, args, message):
    if args == ["--device", "cuda"] and os.environ.get("CUDA_VISIBLE_DEVICES") != "":
        import torch
        if torch.cuda.is_available():
            pytest.skip("this machine has a GPU")
    r = pretrain("--world", world, "--out", str(tmp_path / "run"), "--max-steps", "2", *TINY, *args)
    assert r.returncode == 2, r.stdout + r.stderr
    assert message in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_corrupt_checkpoint_is_one_line(world, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"not a checkpoint")
    r = pretrain("--world", world, "--out", str(out), "--resume", *TINY)
    assert r.returncode == 2 and "corrupt or truncated" in r.stderr and "Traceback" not in r.stderr


def test_init_from_a_local_gpt2_file(world, tmp_path, monkeypatch):
    """--init path/to/model.safetensors: GPT-2 weights you have, no download (the tokenizer is stubbed
    with the world's own: GPT-2's comes from tiktoken's cache or the network)."""
    from safetensors.torch import save_file
    from test_model import hf_gpt2_tensors
    from nanolevels.tokenizer import Tokenizer
    own = Tokenizer.load(os.path.join(world, "tokenizer.json"))
    monkeypatch.setattr(Tokenizer, "gpt2", classmethod(lambda cls: own))
    path = str(tmp_path / "gpt2" / "model.safetensors")
    os.makedirs(os.path.dirname(path))
    save_file(hf_gpt2_tensors(vocab_size=own.vocab_size, block_size=32), path)
    out = str(tmp_path / "run")
    train_pretrain.main(["--world", world, "--out", out, "--init", path, "--max-steps", "2", "--batch-size", "2",
                         "--eval-interval", "2", "--eval-batches", "1", "--device", "cpu"])
    assert json.load(open(os.path.join(out, "metrics.json")))["params"] > 0
    assert not os.path.exists(os.path.join(out, "gpt2"))  # nothing downloaded
    r = pretrain("--world", world, "--out", out, "--init", "gpt3")
    assert r.returncode == 2 and "--init takes scratch, gpt2, a GPT-2 model folder" in r.stderr


def test_a_run_is_never_replaced_silently(world, tmp_path, run_main):
    out = str(tmp_path / "run")
    args = ["--world", world, "--out", out, *TINY]
    assert run_main(train_pretrain.main, *args, "--max-steps", "7")[0] == 0
    model = os.path.join(out, "model.safetensors")
    metrics = json.load(open(os.path.join(out, "metrics.json")))
    assert metrics["fingerprints"] == {"data": provenance.files(world), "model": provenance.checkpoint(model)}
    for extra, message in [([], "already holds a run (model.safetensors); continue it with --resume or start it "
                                "again with --overwrite"),
                           (["--resume", "--max-steps", "5"], "already at step 7, past --max-steps 5"),
                           (["--resume", "--overwrite"], "give one of them")]:
        code, _, err = run_main(train_pretrain.main, *args, "--max-steps", "3", *extra)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
        assert json.load(open(os.path.join(out, "metrics.json"))) == metrics  # nothing touched
    assert run_main(train_pretrain.main, *args, "--max-steps", "3", "--overwrite")[0] == 0
    again = json.load(open(os.path.join(out, "metrics.json")))
    assert again["steps"] == 3 and not os.path.exists(os.path.join(out, "replaced"))
    assert again["fingerprints"]["model"] == provenance.checkpoint(model) != metrics["fingerprints"]["model"]


def files_of(folder):
    return {name: open(os.path.join(folder, name), "rb").read() for name in sorted(os.listdir(folder))}


def test_overwrite_keeps_the_old_run_until_the_new_one_has_a_checkpoint(world, tmp_path, run_main):
    out = str(tmp_path / "run")
    args = ["--world", world, "--out", out, *TINY]
    assert run_main(train_pretrain.main, *args, "--max-steps", "7")[0] == 0
    old = files_of(out)
    for extra, message in [(["--data", str(tmp_path / "none.txt")], "cannot read"),
                           (["--lr", "nan"], "--lr must be a positive number"),
                           (["--dropout", "nan"], "--dropout"),
                           (["--lr", "1e38", "--ckpt-interval", "1"], "no checkpoint of this run was written")]:
        code, _, err = run_main(train_pretrain.main, *args, "--max-steps", "5", "--overwrite", *extra)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
        assert files_of(out) == old, extra  # the inputs were refused, or the new run diverged first
    # a kill -9 between --overwrite setting the old run aside and the new run's first checkpoint
    os.makedirs(os.path.join(out, "replaced"))
    for name in old:
        os.replace(os.path.join(out, name), os.path.join(out, "replaced", name))
    open(os.path.join(out, "log.jsonl"), "w").write('{"step": 0}\n')
    open(os.path.join(out, "model.safetensors.123.tmp"), "wb").write(b"half")
    code, printed, _ = run_main(train_pretrain.main, *args, "--max-steps", "8", "--resume")
    assert code == 0 and "is back" in printed and "resuming from step 7" in printed
    assert "replaced" not in os.listdir(out) and not [n for n in os.listdir(out) if n.endswith(".tmp")]


def test_a_diverging_run_keeps_its_last_sound_checkpoint_and_resumes_from_it(world, tmp_path):
    """An update that blows the weights up is never saved: at --ckpt-interval 1 a rate of 1e38 ends
    the run at the next step's NaN loss, the last sound checkpoint stays, and resuming from it gives
    the log of a run that never diverged (no row twice)."""
    runs = {}
    for name, diverge in (("calm", False), ("diverged", True)):
        out = runs[name] = str(tmp_path / name)
        assert pretrain("--world", world, "--out", out, "--max-steps", "4", *TINY).returncode == 0
        if diverge:
            r = pretrain("--world", world, "--out", out, "--max-steps", "8", "--resume", "--lr", "1e38",
                         "--ckpt-interval", "1", *TINY)
            assert r.returncode == 2 and f"{out} keeps the checkpoint of step 4" in r.stderr, r.stderr
            model, _, meta = load_model(os.path.join(out, "model.safetensors"))
            assert meta["step"] == 4 and all(p.isfinite().all() for p in model.parameters())
        r = pretrain("--world", world, "--out", out, "--max-steps", "8", "--resume", *TINY)
        assert r.returncode == 0 and "resuming from step 4" in r.stdout, r.stderr
    rows = {name: [json.loads(line) for line in open(os.path.join(out, "log.jsonl"))] for name, out in runs.items()}
    timing = ("tokens_per_s", "elapsed_s")
    assert [{k: v for k, v in r.items() if k not in timing} for r in rows["diverged"]] == \
        [{k: v for k, v in r.items() if k not in timing} for r in rows["calm"]]
    steps = [(r["step"], "loss" in r) for r in rows["calm"]]
    assert len(steps) == len(set(steps)) and (4, False) in steps  # step 4's evaluation, once


def test_resume_refuses_a_size_that_contradicts_the_saved_run(world, tmp_path, run_main):
    out = str(tmp_path / "run")
    assert run_main(train_pretrain.main, "--world", world, "--out", out, "--max-steps", "2", *TINY)[0] == 0
    for extra in (["--n-layer", "3"], ["--n-lay", "3"], ["--block-size", "512"]):
        code, _, err = run_main(train_pretrain.main, "--world", world, "--out", out, "--max-steps", "4", "--resume",
                                *TINY, *extra)
        assert code == 2 and "contradicts the run in" in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("args, message", [
    (["--block-size", "0"], "--block-size must be at least 1, got 0"),
    (["--block-size", "-4"], "--block-size must be at least 1, got -4"),
    (["--n-layer", "0"], "--n-layer must be at least 1, got 0"),
    (["--threads", "0"], "--threads must be at least 1, got 0"),
    (["--threads", "two"], "argument --threads: invalid int value: 'two'"),
    (["--data", "latin1.txt"], "line 3 of"),
])
def test_more_user_errors_are_one_line(world, tmp_path, run_main, args, message):
    (tmp_path / "latin1.txt").write_bytes("one\ntwo\nna\u00efve caf\u00e9\n".encode("latin-1") * 50)
    args = [str(tmp_path / a) if a.endswith(".txt") else a for a in args]
    code, out, err = run_main(train_pretrain.main, "--world", world, "--out", str(tmp_path / "run"), "--max-steps", "2",
                              *TINY, *args)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not os.path.exists(os.path.join(tmp_path, "run", "log.jsonl"))  # refused before any training


def test_stops_when_both_dev_checks_pass(world, tmp_path, monkeypatch, capsys):
    """Stored facts (dev cloze) and reading (dev-new with retrieval) must both have arrived."""
    import train_pretrain
    monkeypatch.setattr(train_pretrain, "cloze_accuracy", lambda *a, **k: 1.0)
    reads = iter([0.1, 0.3])
    monkeypatch.setattr(train_pretrain, "eval_rag", lambda *a, **k: {"acc": next(reads)})
    out = str(tmp_path / "run")
    train_pretrain.main(["--world", world, "--out", out, "--max-steps", "20", *TINY])
    m = json.load(open(os.path.join(out, "metrics.json")))
    assert m["steps"] == 4 and m["stopped"] == "dev cloze 1.000 >= 0.97 and dev-new reading 0.300 >= 0.25"
    assert "dev-new people's questions answered from retrieved biographies 0.100 (stop at 0.25)" in capsys.readouterr().out


@pytest.mark.parametrize("make, message", [
    (lambda tmp: str(tmp / "none.safetensors"), "no GPT-2 model.safetensors at"),
    (lambda tmp: (tmp / "garbage.safetensors").write_bytes(b"garbage") and str(tmp / "garbage.safetensors"),
     "is not a readable GPT-2 model.safetensors"),
])
def test_init_from_a_missing_or_garbage_file_says_so_without_the_network(world, tmp_path, make, message):
    r = pretrain("--world", world, "--out", str(tmp_path / "run"), "--init", make(tmp_path), *TINY)
    assert r.returncode == 2 and message in r.stderr and "download" not in r.stderr, r.stderr

"""train_lora.py: per-mode defaults, the files and metrics it writes, the merged model, resume and
overwrite, one-line errors."""

import json
import os
import subprocess
import sys

import pytest
import torch

import train_lora
from conftest import FP32
from nanolevels import provenance
from nanolevels.checkpoint import load_model, read_metadata
from nanolevels.lora import load_adapter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
FAST = ["--max-steps", "4", "--batch-size", "4", "--eval-interval", "2", "--eval-batches", "1", "--log-interval", "2",
        "--device", "cpu"]


def write_pairs(path, n=20):
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"prompt": f"Q: What is {i} plus one?\nA:", "answer": str(i + 1)}) + "\n")
    return str(path)


def test_full_fine_tuning_gets_its_own_learning_rate(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["train_lora.py", "--full", "--min-lr", "0.5"])  # argv=None reads sys.argv
    assert (train_lora.parse_args(None).lr, train_lora.parse_args(None).min_lr) == (train_lora.FULL_LR[0], 0.5)
    lora, full = train_lora.parse_args([]), train_lora.parse_args(["--full"])
    assert (lora.lr, lora.min_lr) == (3e-3, 3e-4)
    assert (full.lr, full.min_lr) == train_lora.FULL_LR
    assert train_lora.parse_args(["--full", "--lr", "0.01"]).lr == 0.01
    assert full.out == os.path.join("out", "full", "qa") and lora.out == os.path.join("out", "lora", "qa")


def test_custom_data_writes_adapter_metrics_and_merged_model(tiny_run, tmp_path):
    out = str(tmp_path / "custom")
    train_lora.main(["--data", write_pairs(tmp_path / "pairs.jsonl"), "--checkpoint", tiny_run["checkpoint"],
                     "--out", out, "--merge", "--r", "4", "--alpha", "8", *FAST])
    m = json.load(open(os.path.join(out, "metrics.json")))
    for key in ("trainable_params", "total_params", "trainable_pct", "adapter_bytes", "base_bytes", "wall_s"):
        assert m[key] > 0, key
    assert set(m["acc"]) == {"heldout"} and m["adapter_bytes"] < m["base_bytes"]
    # the merged file is a plain checkpoint that computes what base + adapter computes
    base, _, _ = load_model(tiny_run["checkpoint"], "cpu")
    load_adapter(os.path.join(out, "adapter.safetensors"), base)
    merged, _, _ = load_model(os.path.join(out, "merged.safetensors"), "cpu")
    x = torch.randint(0, base.config.vocab_size, (2, 16))
    assert torch.allclose(base.eval()(x)[0], merged.eval()(x)[0], **FP32)


def test_rag_qa_scores_with_retrieval(tiny_run, tmp_path, capsys):
    out = str(tmp_path / "rag-qa")
    train_lora.main(["--task", "rag-qa", "--examples", "40", "--checkpoint", tiny_run["checkpoint"],
                     "--world", tiny_run["world"], "--out", out, "--rag-out", str(tmp_path / "rag"), *FAST])
    metrics = json.load(open(os.path.join(out, "metrics.json")))
    assert set(metrics["acc"]) == {"test", "new", "test_rag", "new_rag"}  # dev splits: by the dev check
    assert set(metrics["example"]) == set(metrics["acc"])  # the first question of each, with the answer given
    first = json.loads(open(os.path.join(tiny_run["world"], "qa_test.jsonl")).readline())
    assert metrics["example"]["test_rag"]["question"] == first["question"]
    assert metrics["stopped"].startswith("the step cap")  # a toy model never passes the dev check
    assert "dev check: exact match 0.000 (stop at 0.98) on dev-new with retrieval; " in capsys.readouterr().out
    assert {row: set(accs) for row, accs in metrics["two_hop"].items()} == {
        row: {"test", "new"} for row in ("closed-book", "rag", "oracle")}

    # the agent starts from this reader and is scored by its loop on two-hop questions
    agent = str(tmp_path / "agent")
    train_lora.main(["--task", "agent", "--examples", "40", "--checkpoint", tiny_run["checkpoint"], "--init-adapter",
                     os.path.join(out, "adapter.safetensors"), "--world", tiny_run["world"], "--out", agent,
                     "--rag-out", str(tmp_path / "rag"), *FAST])
    metrics = json.load(open(os.path.join(agent, "metrics.json")))
    assert set(metrics["acc"]) == {"test", "new"} and set(metrics["agentic"]) == set(metrics["acc"])
    for split in ("test", "new"):
        r = metrics["agentic"][split]
        assert {"calls", "recall_both", "ended"} <= set(r)
        assert sum(r["ended"].values()) == metrics["n"][split] and 0 <= r["calls"] <= 3
    assert {"gap", "hops_right", "closed_book"} <= set(metrics["agentic"]["new"])
    out_text = capsys.readouterr().out
    assert f"starting from the adapter {os.path.join(out, 'adapter.safetensors')}" in out_text
    assert "dev-new two-hop questions, agent loop" in out_text


@pytest.mark.parametrize("make_args, message", [
    (lambda run, tmp: ["--checkpoint", str(tmp / "none.safetensors")], "python train_pretrain.py"),
    (lambda run, tmp: ["--data", str(tmp / "none.jsonl")], "no fine-tuning data"),
    (lambda run, tmp: ["--data", write_pairs(tmp / "empty.jsonl", 0)], "holds no examples"),
    (lambda run, tmp: ["--data", str(tmp / "bad.jsonl")], "line 2"),
    (lambda run, tmp: ["--targets", "attn.nope"], "no module matches"),
    (lambda run, tmp: ["--resume", "--out", str(tmp)], "no LoRA adapter"),
    (lambda run, tmp: ["--task", "agent", "--init-adapter", str(tmp / "none.safetensors")], "train the reader first"),
])
def test_user_errors(tiny_run, tmp_path, make_args, message):
    (tmp_path / "bad.jsonl").write_text('{"prompt": "Q: a?\\nA:", "answer": "b"}\n{"prompt": "only"}\n')
    args = make_args(tiny_run, tmp_path)
    if "--checkpoint" not in args:
        args += ["--checkpoint", tiny_run["checkpoint"]]
    if "--out" not in args:  # never the repository's own out/, which may hold a finished run
        args += ["--out", str(tmp_path / "run")]
    r = subprocess.run([sys.executable, "train_lora.py", *args, "--world", tiny_run["world"], *FAST], cwd=ROOT, env=ENV,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_resume_refuses_another_adapter_and_a_run_needs_resume_or_overwrite(tiny_run, tmp_path, run_main):
    out = str(tmp_path / "custom")
    args = ["--data", write_pairs(tmp_path / "pairs.jsonl"), "--checkpoint", tiny_run["checkpoint"], "--out", out,
            *FAST]
    assert run_main(train_lora.main, *args, "--max-steps", "7")[0] == 0
    adapter = os.path.join(out, "adapter.safetensors")
    metrics = json.load(open(os.path.join(out, "metrics.json")))
    assert metrics["fingerprints"] == {"model": provenance.checkpoint(tiny_run["checkpoint"]), "adapter": provenance.checkpoint(adapter)}
    for extra, message in [([], "already holds a run (adapter.safetensors)"),
                           (["--resume", "--r", "8"], "is an adapter with --r 16, not 8"),
                           (["--resume", "--alpha", "8"], "is an adapter with --alpha 32.0, not 8.0"),
                           (["--resume", "--targets", "attn.c_attn"], "adapts other layers"),
                           (["--resume", "--targets", "attn.c_attn,attn.c_proj,mlp.c_fc"], "adapts other layers"),
                           (["--resume", "--max-steps", "5"], "already at step 7, past --max-steps 5")]:
        code, _, err = run_main(train_lora.main, *args, *extra)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, (extra, err)
    assert json.load(open(os.path.join(out, "metrics.json"))) == metrics  # nothing touched
    code, out_text, _ = run_main(train_lora.main, *args, "--resume", "--max-steps", "9", "--targets", "c_attn,c_proj")
    assert code == 0 and "resuming from step 7" in out_text
    assert run_main(train_lora.main, *args, "--overwrite", "--r", "4")[0] == 0
    assert json.load(open(os.path.join(out, "metrics.json")))["steps"] == 4 and read_metadata(adapter)["r"] == 4


def test_overwrite_with_bad_inputs_leaves_the_old_run_and_resume_keeps_its_base(tiny_run, tmp_path, run_main):
    out = str(tmp_path / "full")
    args = ["--data", write_pairs(tmp_path / "pairs.jsonl"), "--checkpoint", tiny_run["checkpoint"], "--out", out,
            "--full", *FAST]
    assert run_main(train_lora.main, *args)[0] == 0
    old = {name: open(os.path.join(out, name), "rb").read() for name in os.listdir(out)}
    other = str(tmp_path / "other.safetensors")  # another base: the same model trained one step more
    model, tokenizer, _ = load_model(tiny_run["checkpoint"])
    with torch.no_grad():
        model.lm_head.weight.mul_(1.01)
    from nanolevels.checkpoint import save_model
    save_model(other, model, tokenizer)
    for extra, message in [(["--checkpoint", str(tmp_path / "none.safetensors"), "--overwrite"], "no model at"),
                           (["--overwrite", "--alpha", "nan"], "--alpha must be a positive number"),
                           (["--overwrite", "--weight-decay", "nan"], "--weight-decay must be a number >= 0"),
                           (["--overwrite", "--stop-acc", "nan"], "--stop-acc must be above 0"),
                           (["--resume", "--checkpoint", other, "--max-steps", "6"], "another base model")]:
        code, _, err = run_main(train_lora.main, *args, *extra)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, (extra, err)
        assert {name: open(os.path.join(out, name), "rb").read() for name in os.listdir(out)} == old, extra

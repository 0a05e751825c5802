"""`python -m nanolevels --tiny`: every level end to end at a toy size; every artefact and every
report.json field is there, and a second run reuses the finished steps."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHODS = ["pretrain-cloze", "zero-shot", "k-shot", "searched-demos", "prompt-program", "rag-base", "lora-qa",
           "full-ft-qa", "lora-rag-qa"]


def test_whole_pipeline_tiny(tmp_path):
    out, world = str(tmp_path / "out"), str(tmp_path / "world")
    cmd = [sys.executable, "-m", "nanolevels", "--tiny", "--out", out, "--world", world, "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    for path in ["report.md", "report.json", "pretrain/model.safetensors", "prompt/metrics.json", "rag/metrics.json",
                 "lora/qa/adapter.safetensors", "full/qa/model.safetensors", "lora/rag-qa/adapter.safetensors"]:
        assert os.path.exists(os.path.join(out, path)), path
    report = json.load(open(os.path.join(out, "report.json")))
    assert {"total_wall_s", "peak_rss_mb", "machine", "rows", "retrieval"} <= set(report)
    assert [row["method"] for row in report["rows"]] == METHODS
    for row in report["rows"]:
        assert {"method", "level", "acc_test", "acc_new", "ci_test", "ci_new", "n_test", "n_new", "trainable_params",
                "wall_s"} <= set(row)
        assert 0 <= row["acc_test"] <= 1 and 0 <= row["acc_new"] <= 1 and row["level"] in (1, 2, 3, 4)
        for split in ("test", "new"):
            low, high = row[f"ci_{split}"]
            assert 0 <= low <= row[f"acc_{split}"] <= high <= 1 and row[f"n_{split}"] == 18  # 3 people x 6
    assert set(report["targets"]) and set(report["stopped"]) == {"pretrain", "lora-qa", "full-ft-qa", "lora-rag-qa"}
    assert set(report["retrieval"]) == {"tfidf", "gpt"}
    assert all(set(r) == {"recall@1", "recall@5"} for r in report["retrieval"].values())
    markdown = open(os.path.join(out, "report.md")).read()
    assert all(f"| {m} |" in markdown for m in METHODS) and "Wilson" in markdown
    again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and again.stdout.count("reusing") == 7, again.stdout[-2000:]
    assert json.load(open(os.path.join(out, "report.json")))["rows"] == report["rows"]


def test_extra_flags_reach_their_steps():
    from nanolevels.__main__ import parse_args, plan
    args = parse_args(["--world-args", "--people 40", "--pretrain-args", "--n-layer 2 --n-embd 64",
                       "--finetune-args", "--max-steps 9"])
    argv = {name: a for name, _, _, a, _, _ in plan(args)}
    assert argv["world"][-2:] == ["--people", "40"]
    assert argv["pretrain"][-4:] == ["--n-layer", "2", "--n-embd", "64"]
    assert all(argv[step][-2:] == ["--max-steps", "9"] for step in ("lora-qa", "full-ft-qa", "lora-rag-qa"))
    assert "--people" not in argv["pretrain"] and "--max-steps" not in argv["prompting"]
    assert args.world == os.path.join("out", "world")  # not the shared data/world
    seeded = {name: a for name, _, _, a, _, _ in plan(parse_args(["--seed", "7"]))}
    assert all(seeded[step][-2:] == ["--seed", "7"] for step in ("world", "pretrain", "prompting", "rag"))
    assert all("--seed" in seeded[step] for step in ("lora-qa", "full-ft-qa", "lora-rag-qa"))
    default = parse_args([])
    assert default.world == os.path.join(ROOT, "data", "world")
    assert plan(default)[1][3] == ["--world", default.world, "--out", os.path.join("out", "pretrain"), "--device", "auto"]

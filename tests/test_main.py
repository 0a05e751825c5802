"""`python -m nanolevels --tiny`: every level end to end at a toy size; every artefact and every
report.json field is there, a second run reuses the finished steps, a copied out/ folder is reused,
a rewritten checkpoint forces every step after it (the report never mixes models), and an edit to
the code reruns exactly the steps that import it."""

import json
import os
import shutil
import subprocess
import sys

import pytest

import train_pretrain
from nanolevels.__main__ import main as orchestrate
from nanolevels import provenance

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHODS = ["pretrain-cloze", "zero-shot", "k-shot", "searched-demos", "prompt-program", "rag-base", "lora-qa",
           "full-ft-qa", "lora-rag-qa", "closed-book-2hop", "rag-2hop", "oracle-2hop", "agentic-rag",
           "chunk-rag-global", "graph-rag-global"]


@pytest.fixture(scope="module")
def tiny_pipeline(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    return {"out": str(root / "out"), "world": str(root / "world"), "tmp": str(root)}


def test_whole_pipeline_tiny(tiny_pipeline):
    out, world, tmp_path = tiny_pipeline["out"], tiny_pipeline["world"], tiny_pipeline["tmp"]
    cmd = [sys.executable, "-m", "nanolevels", "--tiny", "--out", out, "--world", world, "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    for path in ["report.md", "report.json", "report.svg", "loss.svg", "pretrain/model.safetensors",
                 "prompt/metrics.json", "rag/metrics.json", "lora/qa/adapter.safetensors", "full/qa/model.safetensors",
                 "lora/rag-qa/adapter.safetensors", "lora/agent/adapter.safetensors"]:
        assert os.path.exists(os.path.join(out, path)), path
    report = json.load(open(os.path.join(out, "report.json")))
    assert {"total_wall_s", "peak_rss_mb", "machine", "rows", "retrieval"} <= set(report)
    assert [row["method"] for row in report["rows"]] == METHODS
    for row in report["rows"]:
        assert {"method", "level", "acc_test", "acc_new", "ci_test", "ci_new", "n_test", "n_new", "trainable_params",
                "wall_s"} <= set(row)
        assert row["level"] in (1, 2, 3, 4)
        global_questions = row.get("questions") == "global"  # about the whole collection: the new column only
        assert global_questions == row["method"].endswith("-global")
        for split in ("new",) if global_questions else ("test", "new"):
            low, high = row[f"ci_{split}"]
            per_person = 3 if row["questions"] == "two-hop" else 6
            assert 0 <= low <= row[f"acc_{split}"] <= high <= 1
            assert row[f"n_{split}"] == (row["n_new"] if global_questions else 3 * per_person)  # 3 people
        if global_questions:
            assert row["acc_test"] is row["ci_test"] is row["n_test"] is None and row["n_new"] >= 1
    assert report["tiny"] and report["targets"] == {} and "**A --tiny run**" in open(os.path.join(out, "report.md")).read()
    assert set(report["stopped"]) == {"pretrain", "lora-qa", "full-ft-qa", "lora-rag-qa",
                                                                 "agent"}
    assert set(report["agentic"]) == {"test", "new"} and "gap" in report["agentic"]["new"]
    assert set(report["retrieval"]) == {"tfidf", "gpt"}
    assert set(report["graph"]) == {"nodes", "edges", "communities", "precision", "recall", "build_s"}
    by_method = {row["method"]: row for row in report["rows"]}
    reader = by_method["lora-rag-qa"]["fingerprints"]["adapter"]
    assert by_method["graph-rag-global"]["fingerprints"]["adapter"] == reader
    assert all(set(r) == {"recall@1", "recall@5"} for r in report["retrieval"].values())
    markdown = open(os.path.join(out, "report.md")).read()
    assert all(f"| {m} |" in markdown for m in METHODS) and "Wilson" in markdown
    assert "## One question, each method's answer" in markdown and "| lora-rag-qa |" in markdown.split("## One")[1]
    loss = open(os.path.join(out, "loss.svg")).read()
    assert all(f"<title>{run}</title>" in loss for run in ("pretrain", "lora-qa", "full-ft-qa", "lora-rag-qa"))
    again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and again.stdout.count("reusing") == 9, again.stdout[-2000:]
    assert json.load(open(os.path.join(out, "report.json")))["rows"] == report["rows"]
    model = provenance.checkpoint(os.path.join(out, "pretrain", "model.safetensors"))
    assert all(row["fingerprints"]["model"] == model for row in report["rows"])
    by_method = {row["method"]: row["fingerprints"] for row in report["rows"]}
    assert "adapter" in by_method["agentic-rag"] and "finetuned" in by_method["full-ft-qa"]
    steps = open(os.path.join(out, "steps.json")).read()
    assert str(tmp_path) not in steps and "<out>" in steps  # no absolute paths
    # how each step ran (threads, peak memory), kept for a report that a later process builds from reused steps
    records = json.loads(steps).values()
    assert all(r["threads"] == 1 and r["peak_rss_mb"] > 0 for r in records)
    assert report["machine"]["threads"] == "1" and report["peak_rss_mb"] >= max(r["peak_rss_mb"] for r in records)


def test_copied_out_is_reused_and_a_rewritten_checkpoint_reruns_every_later_step(tiny_pipeline, tmp_path, capsys):
    out, world = str(tmp_path / "copy"), tiny_pipeline["world"]
    shutil.copytree(tiny_pipeline["out"], out)
    args = ["--tiny", "--out", out, "--world", world, "--device", "cpu", "--threads", "1"]  # the steps: as the first run
    orchestrate(args)
    assert capsys.readouterr().out.count("reusing") == 9
    # the scenario: train_pretrain.py started again into out/pretrain and cut short (Ctrl-C): the
    # checkpoint is rewritten, and the old metrics.json is put back as if the cut run had left it there
    metrics = os.path.join(out, "pretrain", "metrics.json")
    old = open(metrics).read()
    train_pretrain.main(["--world", world, "--out", os.path.join(out, "pretrain"), "--overwrite", "--n-layer", "2",
                         "--n-head", "2", "--n-embd", "32", "--max-steps", "3", "--device", "cpu"])
    open(metrics, "w").write(old)
    capsys.readouterr()
    orchestrate(args)
    printed = capsys.readouterr().out
    assert "pretrain (level 4; its model changed since it ran)" in printed
    model = provenance.checkpoint(os.path.join(out, "pretrain", "model.safetensors"))
    assert json.load(open(metrics))["fingerprints"]["model"] == model
    # pretraining is deterministic here: the rerun made the very model the later steps scored, so they stand
    assert json.loads(old)["fingerprints"]["model"] == model and printed.count("reusing") == 8
    # another model (other arguments): every step after pretraining runs again
    orchestrate([*args, "--pretrain-args", "--max-steps 12"])
    printed = capsys.readouterr().out
    assert printed.count("reusing") == 1 and "pretrain (level 4; its arguments changed)" in printed
    assert printed.count("changed since it ran") == 7  # the agent: "its model and reader changed"
    assert "graph (level 2; its model and adapter changed since it ran)" in printed  # a new reader too
    report = json.load(open(os.path.join(out, "report.json")))
    model = provenance.checkpoint(os.path.join(out, "pretrain", "model.safetensors"))
    assert json.loads(old)["fingerprints"]["model"] != model
    assert all(row["fingerprints"]["model"] == model for row in report["rows"])


def test_an_edit_reruns_exactly_the_steps_whose_code_imports_it(tiny_pipeline, tmp_path):
    """The forker's loop, in a copy of the repository: an edit to report.py reruns no step and shows in the
    report; an edit to lora.py (the adapter's update multiplied by 0) reruns the steps that import it, says
    which file changed, and the report card shows the new adapters' numbers."""
    repo = tmp_path / "repo"
    shutil.copytree(os.path.join(ROOT, "nanolevels"), repo / "nanolevels", ignore=shutil.ignore_patterns("__pycache__"))
    for script in ("train_pretrain.py", "train_lora.py", "prompt.py", "rag.py", "data/world/prepare.py"):
        os.makedirs(os.path.dirname(repo / script), exist_ok=True)
        shutil.copy(os.path.join(ROOT, script), repo / script)
    out = str(tmp_path / "out")
    shutil.copytree(tiny_pipeline["out"], out)
    cmd = [sys.executable, "-m", "nanolevels", "--tiny", "--out", out, "--world", tiny_pipeline["world"],
           "--device", "cpu"]

    def run():
        r = subprocess.run(cmd, cwd=repo, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                           timeout=600)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        return r.stdout, json.load(open(os.path.join(out, "report.json")))

    printed, before = run()
    assert printed.count("reusing") == 9  # another folder, the same code
    report_py = repo / "nanolevels" / "report.py"
    report_py.write_text(report_py.read_text().replace('"# nanolevels report card"', '"# nanolevels report card!"'))
    printed, _ = run()
    assert printed.count("reusing") == 9 and "# nanolevels report card!" in open(os.path.join(out, "report.md")).read()
    lora_py = repo / "nanolevels" / "lora.py"
    update = "y = y + self.scale * (self.dropout(x) @ self.lora_A.T @ self.lora_B.T)"
    assert update in lora_py.read_text()
    lora_py.write_text(lora_py.read_text().replace(update, update.replace("y + self.scale", "y + 0.0 * self.scale")))
    printed, after = run()
    reruns = [line for line in printed.splitlines() if line.startswith("[") and "changed since it ran" in line]
    assert [line.split()[1] for line in reruns] == ["prompting", "rag", "lora-qa", "full-ft-qa", "lora-rag-qa", "agent",
                                                    "graph"], printed
    assert all("code (nanolevels/lora.py) " in line for line in reruns)  # the agent's reader changed too
    assert printed.count("reusing") == 2  # the world and pretraining do not import lora.py
    rows = {when: {row["method"]: row for row in report["rows"]} for when, report in (("before", before), ("after", after))}
    assert rows["after"]["pretrain-cloze"] == rows["before"]["pretrain-cloze"]
    assert rows["after"]["lora-qa"]["fingerprints"]["adapter"] != rows["before"]["lora-qa"]["fingerprints"]["adapter"]



def test_ask_puts_one_question_to_every_level(tiny_pipeline, capsys):
    """--ask: a one-hop, a two-hop and a global question, each to the methods that can answer it."""
    out, world = tiny_pipeline["out"], tiny_pipeline["world"]
    first = {name: json.loads(open(os.path.join(world, f"{name}.jsonl")).readline())
             for name in ("qa_test", "qa2_new", "people")}
    questions = {"one-hop": first["qa_test"]["question"], "two-hop": first["qa2_new"]["question"],
                 "global": f"How many people worked for {first['people']['employer']}?"}
    expected = {"one-hop": ["zero-shot", "prompt-program", "rag-base", "lora-qa", "full-ft-qa", "lora-rag-qa"],
                "two-hop": ["closed-book-2hop", "rag-2hop", "agentic-rag"],
                "global": ["chunk-rag-global", "graph-rag-global"]}
    for kind, question in questions.items():
        orchestrate(["--tiny", "--out", out, "--world", world, "--ask", question])
        printed = capsys.readouterr().out
        assert f"({kind} question; the right answer: " in printed and "reusing" not in printed
        lines = [line.split() for line in printed.splitlines() if line[:1].isdigit()]
        assert [line[1] for line in lines] == expected[kind], printed
        if kind != "global":
            truth = first["qa_test" if kind == "one-hop" else "qa2_new"]["answer"]
            assert f"the right answer: {truth})" in printed
    with pytest.raises(ValueError, match="ask about a person of the world"):
        orchestrate(["--out", out, "--world", world, "--ask", "What is love?"])

def test_extra_flags_reach_their_steps():
    from nanolevels.__main__ import parse_args, plan
    args = parse_args(["--world-args", "--people 40", "--pretrain-args", "--n-layer 2 --n-embd 64",
                       "--finetune-args", "--max-steps 9"])
    argv = {step.name: step.argv for step in plan(args)}
    assert argv["world"][-2:] == ["--people", "40"]
    assert argv["pretrain"][-4:] == ["--n-layer", "2", "--n-embd", "64"]
    assert all(argv[step][-2:] == ["--max-steps", "9"] for step in ("lora-qa", "full-ft-qa", "lora-rag-qa", "agent"))
    assert "--people" not in argv["pretrain"] and "--max-steps" not in argv["prompting"]
    assert args.world == os.path.join("out", "world")  # not the shared data/world
    seeded = {step.name: step.argv for step in plan(parse_args(["--seed", "7"]))}
    assert all(seeded[step][-2:] == ["--seed", "7"] for step in ("world", "pretrain", "prompting", "rag", "graph"))
    assert all("--seed" in seeded[step] for step in ("lora-qa", "full-ft-qa", "lora-rag-qa", "agent"))
    # --dtype reaches the training steps only, and only when given: a default run's steps keep their arguments
    bf16 = {step.name: step.argv for step in plan(parse_args(["--dtype", "bfloat16"]))}
    training = ("pretrain", "lora-qa", "full-ft-qa", "lora-rag-qa", "agent")
    assert all(" ".join(bf16[step]).count("--dtype bfloat16") == 1 for step in training)
    assert not any("--dtype" in a for step, a in bf16.items() if step not in training)
    default = parse_args([])
    assert default.world == os.path.join(ROOT, "data", "world")
    assert plan(default)[1].argv == ["--world", default.world, "--out", os.path.join("out", "pretrain"), "--overwrite",
                                   "--device", "auto"]

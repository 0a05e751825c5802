"""bench/seeds.py: the spread of every row over seeds, targets judged on each seed, bad input."""

import json
import os
import subprocess
import sys

from conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, "bench"))
import seeds  # noqa: E402


def report(cloze, rag_new, recall=1.0):
    rows = [{"method": "pretrain-cloze", "level": 4, "acc_test": cloze, "acc_new": 0.02, "wall_s": 10.0},
            {"method": "lora-rag-qa", "level": 3, "acc_test": 1.0, "acc_new": rag_new, "wall_s": 5.0}]
    return {"rows": rows, "targets": {"cloze >= 90%": cloze >= 0.9, "rag >= 95%": rag_new >= 0.95},
            "retrieval": {"tfidf": {"recall@1": recall, "recall@5": 1.0}}, "stopped": {"pretrain": "cap"},
            "total_wall_s": 15.0, "peak_rss_mb": 100.0, "machine": {"device": "cpu", "threads": 2, "cpu_count": 2,
                                                                    "torch": "x"}}


def test_table_spreads_and_judges_targets_on_every_seed():
    t = seeds.table({1: report(0.95, 0.99), 2: report(0.89, 0.97, recall=0.5), 3: report(0.92, 0.98)})
    cloze = t["rows"][0]["acc_test"]
    assert cloze["min"] == 0.89 and cloze["max"] == 0.95 and abs(cloze["mean"] - 0.92) < 1e-12
    assert t["targets_missed_by_seed"] == {"cloze >= 90%": [2], "rag >= 95%": []}
    assert t["retrieval"]["tfidf"]["recall@1"]["min"] == 0.5
    text = seeds.markdown(t, "python bench/seeds.py")
    assert "| cloze >= 90% | 2 of 3 (missed: seed 2) |" in text and "| rag >= 95% | 3 of 3 |" in text
    assert "| pretrain-cloze | 4 | 92.0% (89.0% - 95.0%) |" in text


def test_no_seeds_is_one_line_error():
    r = subprocess.run([sys.executable, "bench/seeds.py", "--seeds", "0"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.strip() == "error: --seeds must be at least 1, got 0"


def test_keep_refuses_toy_sizes(run_main):
    code, _, err = run_main(seeds.main, "--keep", "--tiny")  # the kept table is the default sizes'
    assert code == 2 and err == "error: --keep replaces the kept table of the default sizes; not with --tiny\n"


def test_tiny_run_writes_the_table(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "bench/seeds.py", "--tiny", "--seeds", "1", "--first-seed", "5",
                        "--out", str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "seeds table: 1 seed (5)" in (tmp_path / "seeds.md").read_text()
    rows = json.loads((tmp_path / "seeds.json").read_text())["rows"]  # a bar per row and split with a number
    assert (tmp_path / "seeds.svg").read_text().count('class="bar"') == sum(
        row[f"acc_{split}"] is not None for row in rows for split in ("test", "new")) > 2 * 9
    assert (tmp_path / "seed-5" / "world" / "meta.json").exists()

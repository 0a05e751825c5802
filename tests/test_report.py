"""nanolevels/report.py: report.md explains itself, the SVG pictures are well-formed XML with one mark per
number, and a row with no description stops the report."""

import xml.etree.ElementTree as ET

import pytest

from nanolevels.report import loss_svg, markdown, report_svg, seeds_svg

SVG = "{http://www.w3.org/2000/svg}"
QUESTION = {"question": "What is the birth city of Ada <Q> & Co?", "answer": "Lyon"}


def row(method, level, test, new, step, said=None):
    example = None if said is None else {split: {**QUESTION, "prediction": said} for split in ("test", "new")}
    return {"method": method, "level": level, "acc_test": test, "acc_new": new,
            "ci_test": None if test is None else [test / 2, (1 + test) / 2],
            "ci_new": None if new is None else [new / 2, (1 + new) / 2],
            "trainable_params": 0, "step": step, "wall_s": 10.0, "example": example}


def toy_report():
    rows = [row("pretrain-cloze", 4, 0.96, 0.03, "pretrain"), row("zero-shot", 1, 0.04, 0.02, "prompting", "Paris"),
            row("k-shot", 1, 0.05, 0.02, "prompting", "lyon."), row("searched-demos", 1, 0.04, 0.02, "prompting"),
            row("prompt-program", 1, 0.97, 0.03, "prompting", "Ly|on"), row("rag-base", 2, 0.35, 0.35, "rag"),
            row("lora-qa", 3, 0.98, 0.02, "lora-qa"), row("full-ft-qa", 3, 0.97, 0.02, "full-ft-qa"),
            row("lora-rag-qa", 3, 0.96, 0.98, "lora-rag-qa"), row("oracle-2hop", 2, None, 0.5, "two-hop")]
    return {"rows": rows, "targets": {"lora-qa test >= 90%": True, "pretrain-cloze test >= 90%": False},
            "stopped": {"pretrain": "the step cap"}, "retrieval": {"tfidf": {"recall@1": 1.0, "recall@5": 1.0},
                                                                   "gpt": {"recall@1": 0.1, "recall@5": 0.2}},
            "unsure": {"threshold": 0.3, "guesses": {"test": 0, "new": 2}, "made_up_caught": 0.99},
            "program": {"birth_city": {"template": "{name} was born in", "ranked": False}}, "base_params": 1000,
            "machine": {"device": "cpu", "threads": 1, "cpu_count": 2, "torch": "x", "python": "3", "platform": "p"},
            "total_wall_s": 60.0, "peak_rss_mb": 100.0}


def bars(svg: str) -> list:
    return [(r.get("data-split"), r.find(f"{SVG}title").text) for r in ET.fromstring(svg).iter(f"{SVG}rect")
            if r.get("class") == "bar"]


def test_report_svg_has_one_bar_per_row_and_split_with_a_number():
    report = toy_report()
    drawn = bars(report_svg(report))
    numbers = [(split, r["method"]) for r in report["rows"] for split in ("test", "new") if r[f"acc_{split}"] is not None]
    assert len(drawn) == len(numbers) == 19  # the two-hop row has no test number
    assert sorted((split, tip.split(",")[0]) for split, tip in drawn) == sorted(numbers)
    assert ("new", "oracle-2hop, new people: 50.0% [25.0-75.0]") in drawn


def test_seeds_svg_draws_the_mean_with_the_range():
    table = {"seeds": [1, 2, 3], "rows": [
        {"method": "lora-qa", "level": 3, "acc_test": {"mean": 0.9, "min": 0.8, "max": 0.95}, "acc_new": None}]}
    assert bars(seeds_svg(table)) == [("test", "lora-qa, test people: 90.0% [80.0-95.0]")]


def test_loss_svg_has_one_panel_and_polyline_per_run_on_a_log_axis():
    runs = {"pretrain": [(0, 8.0), (100, 2.0), (200, 0.5)], "lora-qa": [(0, 1.0), (50, 0.001)], "a<b>&": [(1, 0.0),
                                                                                                     (2, 3.0)]}
    root = ET.fromstring(loss_svg(runs))
    lines = list(root.iter(f"{SVG}polyline"))
    assert [p.find(f"{SVG}title").text for p in lines] == list(runs)
    ys = [float(xy.split(",")[1]) for xy in lines[0].get("points").split()]
    assert ys[0] < ys[1] < ys[2] and abs((ys[1] - ys[0]) - (ys[2] - ys[1])) < 0.2  # each step a factor 4: even
    texts = [t.text for t in root.iter(f"{SVG}text")]
    assert texts.count("optimizer step") == 3 and texts.count("loss (log)") == 3 and "a<b>&" in texts
    ends = [float(p.get("points").split()[-1].split(",")[0]) for p in lines]
    assert ends[0] == ends[1]  # each run's own step axis: 200 pretraining and 50 fine-tuning steps end alike


def test_markdown_explains_itself():
    text = markdown(toy_report())
    for words in ("**test people**", "**new people**", "**dev and dev-new people**", "**closed book**",
                  "**with retrieval**", "Exact match on one-hop questions", "Exact match on two-hop questions",
                  "![accuracy per method](report.svg)", "zero-shot, k-shot, searched-demos, prompt-program (prompting)"):
        assert words in text, words
    cloze, exact = text.index("## Level 4, pretraining"), text.index("## Exact match on one-hop")
    assert cloze < text.index("| pretrain-cloze |") < exact  # in its own table, never under exact match
    assert text.index("| zero-shot |") < text.index("| rag-base |") < text.index("| lora-qa |")  # levels 1, 2, 3
    assert "| oracle-2hop | 2 RAG | gold documents | - | 50.0% [25.0-75.0] |" in text
    assert "- **lora-rag-qa** (level 3 fine-tuning, with retrieval): a LoRA adapter trained" in text
    assert "| zero-shot | Paris ✗ | Paris ✗ |" in text and "| k-shot | lyon. ✓ | lyon. ✓ |" in text
    assert "| prompt-program | Ly\\|on ✗ | Ly\\|on ✗ |" in text and "| rag-base |" not in text.split("## One")[1]
    assert "seeds" not in text.split("## Level 4")[1].split("## Targets")[0]  # no seeds table given
    assert "| pretrain-cloze test >= 90% | missed | - |" in text


def test_markdown_shows_the_seeds_range_and_where_targets_hold():
    seeds = {"seeds": [1, 2, 3], "targets_missed_by_seed": {"pretrain-cloze test >= 90%": [2]},
             "rows": [{"method": "lora-qa", "acc_test": {"mean": 0.9, "min": 0.8, "max": 0.95}, "acc_new": None}]}
    text = markdown(toy_report(), seeds)
    assert "| lora-qa | 3 fine-tuning | closed book | 98.0% [49.0-99.0]; seeds 80.0-95.0% | 2.0% [1.0-51.0] |" in text
    assert "| pretrain-cloze test >= 90% | missed | 2 of 3 |" in text and "over the 3 seeds" in text


def test_a_row_with_no_description_stops_the_report():
    report = toy_report()
    report["rows"].append(row("mystery-method", 2, 0.5, 0.5, "rag"))
    with pytest.raises(ValueError, match="no description of mystery-method"):
        markdown(report)
    with pytest.raises(ValueError, match="no description of mystery-method"):
        report_svg(report)


def test_no_kept_answers_no_answers_section():  # rows from metrics.json files written before answers were kept
    report = toy_report()
    for r in report["rows"]:
        r["example"] = None
    assert "## One question" not in markdown(report)

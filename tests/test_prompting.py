"""Prompt layout, few-shot prompts, the demo search, and exact-match scoring."""

import pytest

from nanolevels.evaluate import accuracy, exact_match, normalize
from nanolevels.prompting import answer_text, candidate_demo_sets, few_shot, qa_prompt, search_demos

DEMOS = [{"question": "What is the birth city of Ada Jo Crane?", "answer": "Lyon"},
         {"question": "What did Bo Lee Vance study?", "answer": "Physics"}]


def test_layout_is_exactly_as_documented():
    assert qa_prompt("Who?") == "Q: Who?\nA:"
    assert qa_prompt("Who?", ["Doc one.", "Doc two."]) == "Doc one.\nDoc two.\nQ: Who?\nA:"
    assert answer_text("Lyon") == " Lyon\n"
    assert few_shot("Who?") == qa_prompt("Who?")
    assert few_shot("Who?", DEMOS, ["Doc."]) == (
        "Q: What is the birth city of Ada Jo Crane?\nA: Lyon\n"
        "Q: What did Bo Lee Vance study?\nA: Physics\n"
        "Doc.\n"
        "Q: Who?\nA:")


def test_candidates_are_seeded_and_include_zero_shot():
    pool = [{"question": str(i), "answer": str(i)} for i in range(20)]
    a = candidate_demo_sets(pool, ks=(0, 1, 3), per_k=2, seed=1)
    assert a == candidate_demo_sets(pool, ks=(0, 1, 3), per_k=2, seed=1)
    assert [len(c) for c in a] == [0, 1, 1, 3, 3]
    assert a != candidate_demo_sets(pool, ks=(0, 1, 3), per_k=2, seed=2)


def test_search_returns_best_candidate_and_prefers_fewer_demos_on_ties():
    pool = [{"question": str(i), "answer": str(i)} for i in range(10)]
    candidates = candidate_demo_sets(pool, ks=(0, 1, 3), per_k=3, seed=0)
    # a toy metric: the score is the sum of the demos' numbers (zero-shot scores 0)
    best, scores = search_demos(lambda demos: sum(int(d["answer"]) for d in demos), candidates)
    assert scores[candidates.index(best)] == max(scores)
    best, _ = search_demos(lambda demos: 1.0, candidates)
    assert best == []


@pytest.mark.parametrize("prediction, answer, ok", [
    (" Lyon", "Lyon", True), ("lyon.", "Lyon", True), ("  March 3,  1987 ", "March 3, 1987", True),
    ("Lyon Porto", "Lyon", False), ("", "Lyon", False), ("Computer  Science", "computer science", True)])
def test_exact_match_normalisation(prediction, answer, ok):
    assert exact_match(prediction, answer) is ok
    assert normalize(" A  b. ") == "a b"


def test_accuracy():
    assert accuracy(["Lyon", "x"], ["lyon", "y"]) == 0.5
    with pytest.raises(ValueError):
        accuracy([], [])

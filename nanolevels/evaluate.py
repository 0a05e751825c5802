"""Scoring, one way for every level: greedy completions, exact match, cloze accuracy.

Every level is measured the same way: the model continues a prompt greedily, the completion is cut
at the first stop string (a newline for QA answers), and it counts only if it equals the true
answer after normalisation (case, runs of spaces and a final period do not matter).
Every prompt starts with <|endoftext|>, as every document did in pretraining.
"""

import math
import re
from collections import defaultdict

import torch

from nanolevels.prompting import candidate_demo_sets, few_shot, rag_prompt, search_demos
from nanolevels.retrieval import retrieval_recall
from nanolevels.world import ATTRIBUTES, cloze_prompt


def normalize(text: str) -> str:
    """Lower case, single spaces, no surrounding spaces or final period."""
    return re.sub(r"\s+", " ", text).strip().rstrip(".").strip().lower()


def exact_match(prediction: str, answer: str) -> bool:
    return normalize(prediction) == normalize(answer)


ANSWER_TOKENS = 16  # the longest answer generated: room every prompt leaves in the block


@torch.no_grad()
def complete(model, tokenizer, prompts: list[str], max_new_tokens: int = ANSWER_TOKENS, stops=("\n",),
             batch_size: int = 64) -> list[str]:
    """Greedy completion of each prompt, cut at the first stop string (or <|endoftext|>).

    Prompts of equal token length are generated together as one batch (no padding needed, so the
    batch gives exactly what one-by-one generation gives, only faster).
    """
    model.eval()
    device = next(model.parameters()).device
    encoded = [[tokenizer.eot_id] + tokenizer.encode(p) for p in prompts]
    by_length = defaultdict(list)
    for i, ids in enumerate(encoded):
        by_length[len(ids)].append(i)
    out = [""] * len(prompts)
    for length, rows in by_length.items():
        for b in range(0, len(rows), batch_size):
            chunk = rows[b:b + batch_size]
            idx = torch.tensor([encoded[i] for i in chunk], device=device)
            new = model.generate(idx, max_new_tokens, temperature=0)[:, length:].tolist()
            for i, ids in zip(chunk, new):
                if tokenizer.eot_id in ids:
                    ids = ids[:ids.index(tokenizer.eot_id)]
                text = tokenizer.decode(ids)
                for s in stops:
                    text = text.split(s, 1)[0]
                out[i] = text
    return out


def accuracy(predictions: list[str], answers: list[str]) -> float:
    if not answers:
        raise ValueError("nothing to score: the question set is empty")
    return sum(exact_match(p, a) for p, a in zip(predictions, answers)) / len(answers)


def wilson(acc: float, n: int, z: float = 1.96) -> list[float]:
    """[low, high]: the 95% Wilson score interval of a share `acc` of n trials.

    Unlike acc +- 1.96 * sqrt(acc * (1 - acc) / n), it stays inside [0, 1] and is not zero-width at
    0% or 100%: with n questions all answered right, the true accuracy may still be a little lower."""
    if n < 1:
        raise ValueError("an interval needs at least one question")
    centre = (acc + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(acc * (1 - acc) / n + z * z / (4 * n * n))
    return [max(0.0, centre - half), min(1.0, centre + half)]


def cloze_accuracy(model, tokenizer, people) -> float:
    """Share of (person, attribute) the model completes exactly from a biography sentence's start,
    e.g. '<|endoftext|>Ada Jo Crane was born in' -> ' Lyon.'"""
    prompts = [cloze_prompt(p, a) for p in people for a in ATTRIBUTES]
    answers = [p.value(a) for p in people for a in ATTRIBUTES]
    return accuracy(complete(model, tokenizer, prompts, stops=(".", "\n")), answers)


def score_answers(questions: list[dict], predictions: list[str]) -> dict:
    """{acc, example}: exact match over questions ({question, answer, ...}), and the first question with
    the model's answer, so that the report card can show a real answer beside each number."""
    acc = accuracy(predictions, [q["answer"] for q in questions])  # raises on no questions
    first = questions[0]
    return {"acc": acc, "example": {"question": first["question"], "answer": first["answer"],
                                    "prediction": predictions[0].strip()}}


def eval_qa(model, tokenizer, questions: list[dict], make_prompt) -> dict:
    """{acc, example} (see score_answers) over questions, each asked as make_prompt(q)."""
    return score_answers(questions, complete(model, tokenizer, [make_prompt(q) for q in questions]))


def qa_accuracy(model, tokenizer, questions: list[dict], make_prompt) -> float:
    """eval_qa's exact match alone: for checks that only need the number (a dev check, a baseline)."""
    return eval_qa(model, tokenizer, questions, make_prompt)["acc"]


def show_row(name: str, row: dict, log=print) -> None:
    """One line of level 1's table: a prompt's dev score (what chose it), then its held-out scores."""
    log(f"{name:<50}" + "  ".join(f"{split} {acc:.3f}" for split, acc in row.items()))


def eval_prompting(model, tokenizer, pool: list[dict], dev: list[dict], heldout: dict, ks=(1, 3), draws: int = 2,
                   seed: int = 0, log=print) -> dict:
    """Level 1's question prompts on held-out questions ({split: questions}): zero-shot, random k-shot,
    searched demos.

    The candidates are zero-shot and `draws` random demo sets of each k, drawn from `pool` (the train
    people's questions); each is scored on `dev` (the dev people's) and on the held-out splits, and
    the search picks by dev alone. Random k-shot is the mean over its k's sets; every row asks the
    same question template with greedy decoding, so the rows differ only in the demos.
    """
    candidates = candidate_demo_sets(pool, (0, *ks), draws, seed)

    def ask(questions, demos):
        return eval_qa(model, tokenizer, questions, lambda q: few_shot(q["question"], demos))

    best, dev_scores = search_demos(lambda demos: ask(dev, demos)["acc"], candidates)
    results = [{split: ask(questions, demos) for split, questions in heldout.items()} for demos in candidates]
    scored = [{"dev": d, **{split: r["acc"] for split, r in res.items()}} for d, res in zip(dev_scores, results)]
    answers = [{split: r["example"] for split, r in res.items()} for res in results]
    rows, examples = {"zero-shot": scored[0]}, {"zero-shot": answers[0]}
    show_row("zero-shot question", rows["zero-shot"], log)
    for j, k in enumerate(ks):
        runs = scored[1 + j * draws:1 + (j + 1) * draws]
        rows[f"{k}-shot"] = {split: sum(r[split] for r in runs) / len(runs) for split in runs[0]}
        examples[f"{k}-shot"] = answers[1 + j * draws]  # the row is a mean over sets: the first set's answers
        show_row(f"{k}-shot question (mean of {draws} random demo sets)", rows[f"{k}-shot"], log)
    rows["searched-demos"] = scored[candidates.index(best)]
    examples["searched-demos"] = answers[candidates.index(best)]
    show_row(f"searched demos (best of {len(candidates)} sets on dev: k={len(best)})", rows["searched-demos"], log)
    return {"acc": rows, "example": examples,
            "search": {"candidates": len(candidates), "dev_questions": len(dev), "dev_scores": dev_scores,
                       "best_dev": max(dev_scores), "best_demos": best}}


def eval_rag(model, tokenizer, index, embedder, questions: list[dict], k: int, demos=(),
             max_new_tokens: int = ANSWER_TOKENS, log=print) -> dict:
    """Level 2 on questions: retrieve k documents per question, put them in the prompt, answer.

    Returns exact-match accuracy and its example (see score_answers), the share per attribute (a reader
    learns attributes one at a time), and recall@1 / recall@5: how often the asked-about person's
    biography was among the top 1 / top 5 documents (retrieval can only help when it was)."""
    hits, recall = retrieval_recall(index, embedder, questions, k)
    budget = model.config.block_size - max_new_tokens  # room for the answer inside the block
    prompts, dropped = [], 0
    for q, top in zip(questions, hits):
        prompt, n = rag_prompt(q["question"], [doc["text"] for _, doc in top[:k]], tokenizer, budget, demos)
        prompts.append(prompt)
        dropped += n > 0
    if dropped:
        log(f"note: {dropped} of {len(prompts)} prompts did not fit the {model.config.block_size}-token block; "
            f"their lowest-ranked documents were dropped")
    predictions = complete(model, tokenizer, prompts, max_new_tokens)
    by_attribute = defaultdict(list)
    for p, q in zip(predictions, questions):
        by_attribute[q["attribute"]].append(exact_match(p, q["answer"]))
    return {**score_answers(questions, predictions),
            "by_attribute": {a: sum(hits) / len(hits) for a, hits in by_attribute.items()}, **recall}

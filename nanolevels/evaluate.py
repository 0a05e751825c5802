"""Scoring, one way for every level: greedy completions, exact match, cloze accuracy.

A greedy completion, cut at its first stop string, counts only if it equals the true answer up to
case, runs of spaces and a final period.
References: SQuAD's exact match (arXiv:1606.05250); Wilson, JASA 1927 (the score interval).
"""

import math
import re
from collections import defaultdict

import torch

from nanolevels.prompting import ANSWER_TOKENS, context_budget, prompt_ids, rag_prompt
from nanolevels.retrieval import retrieval_recall
from nanolevels.world import ATTRIBUTES, cloze_prompt


def normalize(text: str) -> str:
    """Lower case, single spaces, no surrounding spaces or final period."""
    return re.sub(r"\s+", " ", text).strip().rstrip(".").strip().lower()


def exact_match(prediction: str, answer: str) -> bool:
    return normalize(prediction) == normalize(answer)


@torch.no_grad()
def complete(model, tokenizer, prompts: list[str], max_new_tokens: int = ANSWER_TOKENS,
             stops=("\n",), batch_size: int = 64, until=None) -> list[str]:
    """Greedy completion of each prompt, cut at the first stop string (or <|endoftext|>). A batch
    stops generating once every row is done: its text holds a stop string, or until(text) says so
    (the agent's line), so what comes back is what the full max_new_tokens would give."""
    model.eval()
    device = next(model.parameters()).device
    encoded = [prompt_ids(tokenizer, p) for p in prompts]
    by_length = defaultdict(list)  # a batch per token length: no padding, same as one by one
    for i, ids in enumerate(encoded):
        by_length[len(ids)].append(i)
    out = [""] * len(prompts)

    def done(ids) -> bool:
        text = tokenizer.decode(ids)
        return (tokenizer.eot_id in ids or any(s in text for s in stops)
                or (until is not None and until(text)))
    for rows in by_length.values():
        for b in range(0, len(rows), batch_size):
            chunk = rows[b:b + batch_size]
            new = [[] for _ in chunk]
            finished = [False] * len(chunk)
            idx = torch.tensor([encoded[i] for i in chunk], device=device)
            for step in model.generate_steps(idx, max_new_tokens, temperature=0):
                for j, token in enumerate(step[:, 0].tolist()):
                    new[j].append(token)
                    finished[j] = finished[j] or done(new[j])
                if all(finished):
                    break
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
    """[low, high]: the 95% Wilson score interval of a share `acc` of n trials; unlike acc +- 1.96
    * sqrt(acc * (1 - acc) / n), it stays inside [0, 1] and is not zero-width at 0% or 100%."""
    if n < 1:
        raise ValueError("an interval needs at least one question")
    centre = (acc + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(acc * (1 - acc) / n + z * z / (4 * n * n))
    return [max(0.0, centre - half), min(1.0, centre + half)]


def report_row(method: str, level: int, questions: str, acc: dict, n: dict, trainable_params: int,
               fingerprints: dict, example: dict | None = None, **extra) -> dict:
    """A report card row, as a scoring script writes it into metrics.json: acc and n per split
    (test, new; either may be missing), the model scored, example {split: {question, answer...}}."""
    row = {"method": method, "level": level, "questions": questions}
    for split in ("test", "new"):
        a = acc.get(split)
        row |= {f"acc_{split}": a, f"ci_{split}": None if a is None else wilson(a, n[split]),
                f"n_{split}": None if a is None else n[split]}
    return {**row, "trainable_params": trainable_params, "example": example,
            "fingerprints": fingerprints, **extra}


def cloze_accuracy(model, tokenizer, people) -> float:
    """Share of (person, attribute) completed exactly from a sentence start ('X was born in')."""
    prompts = [cloze_prompt(p, a) for p in people for a in ATTRIBUTES]
    answers = [p.value(a) for p in people for a in ATTRIBUTES]
    return accuracy(complete(model, tokenizer, prompts, stops=(".", "\n")), answers)


def score_answers(questions: list[dict], predictions: list[str]) -> dict:
    """{acc, example}: exact match over questions, and the first one with the model's answer."""
    acc = accuracy(predictions, [q["answer"] for q in questions])  # raises on no questions
    first = questions[0]
    return {"acc": acc, "example": {"question": first["question"], "answer": first["answer"],
                                    "prediction": predictions[0].strip()}}


def eval_qa(model, tokenizer, questions: list[dict], make_prompt) -> dict:
    """{acc, example} (see score_answers) over questions, each asked as make_prompt(q)."""
    return score_answers(questions, complete(model, tokenizer, [make_prompt(q) for q in questions]))


def qa_accuracy(model, tokenizer, questions: list[dict], make_prompt) -> float:
    """eval_qa's exact match alone: for checks that need only the number (dev check, baseline)."""
    return eval_qa(model, tokenizer, questions, make_prompt)["acc"]


def eval_rag(model, tokenizer, index, embedder, questions: list[dict], k: int, demos=(),
             log=print) -> dict:
    """Level 2: retrieve k documents per question, put them in the prompt, answer; {acc, example,
    by_attribute, recall@1, recall@5} (recall: how often the person's biography was retrieved)."""
    hits, recall = retrieval_recall(index, embedder, questions, k)
    budget = context_budget(model)
    prompts, dropped = [], 0
    for q, top in zip(questions, hits):
        docs = [doc["text"] for _, doc in top[:k]]
        prompt, n = rag_prompt(q["question"], docs, tokenizer, budget, demos)
        prompts.append(prompt)
        dropped += n > 0
    if dropped:
        log(f"note: {dropped} of {len(prompts)} prompts did not fit the "
            f"{model.config.block_size}-token block; their lowest-ranked documents were dropped")
    predictions = complete(model, tokenizer, prompts)
    by_attribute = defaultdict(list)
    for p, q in zip(predictions, questions):
        by_attribute[q["attribute"]].append(exact_match(p, q["answer"]))
    return {**score_answers(questions, predictions),
            "by_attribute": {a: sum(right) / len(right) for a, right in by_attribute.items()},
            **recall}

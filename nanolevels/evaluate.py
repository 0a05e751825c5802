"""Scoring, one way for every level: greedy completions, exact match, cloze accuracy.

Every level is measured the same way: the model continues a prompt greedily, the completion is cut
at the first stop string (a newline for QA answers), and it counts only if it equals the true
answer after normalisation (case, surrounding spaces and final punctuation do not matter).
Every prompt starts with <|endoftext|>, as every document did in pretraining.
"""

import re
from collections import defaultdict

import torch

from nanolevels.world import ATTRIBUTES, cloze_prompt


def normalize(text: str) -> str:
    """Lower case, single spaces, no surrounding spaces or final period."""
    return re.sub(r"\s+", " ", text).strip().rstrip(".").strip().lower()


def exact_match(prediction: str, answer: str) -> bool:
    return normalize(prediction) == normalize(answer)


@torch.no_grad()
def complete(model, tokenizer, prompts: list[str], max_new_tokens: int = 16, stops=("\n",),
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


def cloze_accuracy(model, tokenizer, people) -> float:
    """Share of (person, attribute) the model completes exactly from a biography sentence's start,
    e.g. '<|endoftext|>Ada Jo Crane was born in' -> ' Lyon.'"""
    prompts = [cloze_prompt(p, a) for p in people for a in ATTRIBUTES]
    answers = [p.value(a) for p in people for a in ATTRIBUTES]
    return accuracy(complete(model, tokenizer, prompts, stops=(".", "\n")), answers)

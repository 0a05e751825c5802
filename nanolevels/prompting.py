"""Prompts: the one QA layout every level uses, few-shot prompts, and a search for the best demos.

    Q: <question>\nA: <answer>\n ...       (k demonstrations, level 1; none when zero-shot)
    [context document]\n ...              (retrieved documents, level 2; none when closed-book)
    Q: <question>\nA:                      (the model continues with " <answer>\n")

That is how the pretraining text's reading pages are written, so a base model has seen it.
References: GPT-3's few-shot prompts (arXiv:2005.14165), DSPy (arXiv:2310.03714).
"""

import random

ANSWER_TOKENS = 16  # the longest answer generated: room every prompt leaves in the block


def prompt_ids(tokenizer, text: str) -> list[int]:
    """The token ids a prompt is fed as: <|endoftext|> first, as before every pretraining text."""
    return [tokenizer.eot_id] + tokenizer.encode(text)


def context_budget(model) -> int:
    """Tokens a prompt may take: the block, less the room its answer needs."""
    return model.config.block_size - ANSWER_TOKENS


def qa_prompt(question: str, context=()) -> str:
    """Context documents (one per line), then 'Q: <question>\\nA:'."""
    return "".join(doc + "\n" for doc in context) + f"Q: {question}\nA:"


def answer_text(answer: str) -> str:
    """What the model should write after a qa_prompt: a space, the answer, a newline."""
    return f" {answer}\n"


def few_shot(question: str, demos=(), context=()) -> str:
    """A k-shot prompt: each demo ({question, answer}) answered, the documents, the question."""
    # the documents right above the question, as on a reading page (demos between would break it)
    shots = "".join(qa_prompt(d["question"]) + answer_text(d["answer"]) for d in demos)
    return shots + qa_prompt(question, context)


def candidate_demo_sets(pool: list, ks=(0, 1, 3, 5), per_k: int = 4, seed: int = 0) -> list[list]:
    """Zero-shot once, then per_k random demo sets of each k > 0, drawn from pool (seeded)."""
    rng = random.Random(seed)
    sets = [[]] if 0 in ks else []
    for k in ks:
        if k > 0:
            sets += [rng.sample(pool, min(k, len(pool))) for _ in range(per_k)]
    return sets


def best_index(scores: list[float]) -> int:
    """The index of the highest score; ties go to the earlier (list the shorter prompts first)."""
    return max(range(len(scores)), key=lambda i: (scores[i], -i))


def search_demos(score, candidates: list[list]) -> tuple[list, list[float]]:
    """(best demo set, all scores): DSPy's BootstrapFewShotWithRandomSearch; ties to fewer demos."""
    scores = [score(demos) for demos in candidates]
    return candidates[best_index(scores)], scores


def rag_prompt(question: str, docs: list[str], tokenizer, budget: int, demos=()) -> tuple[str, int]:
    """(prompt, number of documents dropped) for a question and its retrieved documents, best
    first; while the prompt has `budget` tokens or more, the lowest-ranked goes (one stays)."""
    kept = list(docs)
    prompt = few_shot(question, demos, context=kept[::-1])  # the best LAST: where it is read best
    while len(kept) > 1 and len(tokenizer.encode(prompt)) >= budget:  # generate keeps the tail
        kept.pop()
        prompt = few_shot(question, demos, context=kept[::-1])
    return prompt, len(docs) - len(kept)

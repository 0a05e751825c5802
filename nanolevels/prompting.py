"""Prompts: the one QA layout every level uses, few-shot prompts, and a search for the best demos.

Level 1 changes no weight: what we put in front of the question is the program. The layout is

    Q: <question>\nA: <answer>\n ...       (k demonstrations, level 1; none when zero-shot)
    [context document]\n ...              (retrieved documents, level 2; none when closed-book)
    Q: <question>\nA:                      (the model continues with " <answer>\n")

which is exactly how the pretraining text's reading pages are written (a biography, then its
questions answered), so a base model has seen the pattern. The demo search is the idea of DSPy's
BootstrapFewShotWithRandomSearch, from scratch and short: draw candidate demo sets (zero-shot
included), score each on a dev set with the same metric as the final evaluation, keep the best.
"""

import random

ANSWER_TOKENS = 16  # the longest answer generated: room every prompt leaves in the block


def prompt_ids(tokenizer, text: str) -> list[int]:
    """The token ids a prompt is fed as: <|endoftext|> first, as before every document in pretraining."""
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
    """A k-shot prompt: each demo (a dict with question, answer) answered, then the context
    documents, if any, then the question.

    The documents stay right above the question, as a biography sits above its questions on a
    reading page, the layout the model learned to read from (demos between the documents and the
    question break that pattern)."""
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
    """The index of the highest score; ties go to the earlier candidate (list the shorter prompts first)."""
    return max(range(len(scores)), key=lambda i: (scores[i], -i))


def search_demos(score, candidates: list[list]) -> tuple[list, list[float]]:
    """(best demo set, score of every candidate): score(demos) -> dev accuracy, higher is better.

    Ties go to the earlier candidate, i.e. to fewer demos: a shorter prompt for the same score."""
    scores = [score(demos) for demos in candidates]
    return candidates[best_index(scores)], scores


def rag_prompt(question: str, docs: list[str], tokenizer, budget: int, demos=()) -> tuple[str, int]:
    """(prompt, number of documents dropped) for a question and its retrieved documents, best first.

    The best document goes LAST, right before the question, where a small model reads best. If
    the prompt is `budget` tokens or longer, the lowest-ranked documents are dropped first; one
    document is always kept (generation then keeps the prompt's tail)."""
    kept = list(docs)
    prompt = few_shot(question, demos, context=kept[::-1])
    while len(kept) > 1 and len(tokenizer.encode(prompt)) >= budget:
        kept.pop()
        prompt = few_shot(question, demos, context=kept[::-1])
    return prompt, len(docs) - len(kept)

"""Level 1's compiled prompt program: prompts mined from the pretraining text, chosen on dev.

A base model rarely answers "What is the birth city of X?", yet completes "X was born in": so we
mine prompts from the corpus (as LPAQA), score each (template x demos) on the dev people (as DSPy
compiles a program), keep the best per attribute and freeze it to the JSON `prompt.py --ask` runs.
References: LPAQA (arXiv:1911.12543), DSPy (arXiv:2310.03714).
"""

import os
import re
from collections import Counter, defaultdict

import torch

from nanolevels import provenance
from nanolevels.evaluate import accuracy, complete, eval_qa, exact_match, score_answers
from nanolevels.files import read_json
from nanolevels.prompting import (best_index, candidate_demo_sets, few_shot, prompt_ids, qa_prompt,
                                  search_demos)
from nanolevels.world import (ATTRIBUTES, CITIES, EMPLOYERS, MAJORS, QUESTIONS, UNIVERSITIES,
                              match_template)

FORMAT = "nanolevels-prompt-program"
MINED = 4  # templates kept per attribute, the most frequent in the corpus
DEMO_KS = (0, 1, 3)  # demonstrations per candidate
DEMO_SETS = 1  # random demo sets per k > 0 (one keeps prompt.py --eval inside its time budget)
ENSEMBLE = 3  # at most this many of the best templates rank an attribute's values together

# One hand-written rewording of each question (the only hand-written prompts besides the questions).
PARAPHRASES = {
    "birth_date": "When was {name} born?",
    "birth_city": "Where was {name} born?",
    "university": "Where did {name} go to college?",
    "major": "What was the major of {name}?",
    "employer": "Who employed {name}?",
    "employer_city": "In which city did {name} work?",
}

# The program's output type (a DSPy signature's output field): the values an attribute can take,
# from the world's own pools. Ranking needs them; birth dates (any day of 56 years) are generated.
VALUES = {"birth_city": CITIES, "university": UNIVERSITIES, "major": MAJORS,
          "employer": sorted(EMPLOYERS), "employer_city": sorted(set(EMPLOYERS.values()))}


def mine_templates(text, facts: list[dict], keep: int = MINED) -> dict[str, list[str]]:
    """The `keep` most frequent templates per attribute, from facts ({person, attribute, answer}):
    'Ada Jo Crane was born in Lyon.' -> '{name} was born in'. text: the corpus, or its lines one at
    a time (an open pretrain.txt: a big world's never sits in memory)."""
    values = defaultdict(dict)  # person -> attribute -> value
    for f in facts:
        values[f["person"]][f["attribute"]] = f["answer"]
    if not values:
        raise ValueError("no dev questions to mine prompts with; prepare the world with: "
                         "python data/world/prepare.py")
    # a full name is three words: the first three-word run that is a fact's person (a look-up per
    # word, where a pattern of all the names would try each of them at every capital letter)
    runs = re.compile(r"\b(?=(\w+ \w+ \w+)\b)")
    counts = defaultdict(Counter)
    lines = (m[0] for m in re.finditer(r"[^\n]+", text)) if isinstance(text, str) else text
    for line in lines:  # one at a time, from a string too (no list of a big world's lines)
        for sentence in re.split(r"(?<=\.) ", line.rstrip("\n")):
            found = next((m for m in runs.finditer(sentence) if m[1] in values), None)
            if found is None:
                continue
            for attribute, value in values[found[1]].items():
                at = sentence.find(value, found.end(1))  # a prompt ends where the value starts
                if at >= 0:
                    counts[attribute][sentence[:at].rstrip().replace(found[1], "{name}")] += 1
    return {attribute: [t for t, _ in c.most_common(keep)] for attribute, c in counts.items()}


def prompt_text(prompt: dict, name: str) -> str:
    """The prompt's answered demos, then its template for name ('... Ada Jo Crane was born in')."""
    end = "\n" if prompt["stop"] == "\n" else ". "
    shots = "".join(f"{prompt['template'].replace('{name}', n)} {answer}{end}"
                    for n, answer in prompt["demos"])
    return shots + prompt["template"].replace("{name}", name)


def generate(model, tokenizer, prompts: list[dict], names: list[str]) -> list[str]:
    """Greedy answers, prompt i about names[i]: cut at a newline, and at '.' after a sentence."""
    out = [""] * len(prompts)
    for stop in {p["stop"] for p in prompts}:
        rows = [i for i, p in enumerate(prompts) if p["stop"] == stop]
        texts = complete(model, tokenizer, [prompt_text(prompts[i], names[i]) for i in rows],
                         stops=(stop, "\n"))
        for i, text in zip(rows, texts):
            out[i] = text
    return out


def candidates(attribute: str, mined: list[str], demo_sets: list[list], known: dict) -> list[dict]:
    """Every (template, demo set) for attribute, fewer demos first; `known` answers the demos."""
    templates = [{"template": t, "stop": "."} for t in mined]  # the mined sentence starts
    templates += [{"template": qa_prompt(q), "stop": "\n"}
                  for q in (QUESTIONS[attribute], PARAPHRASES[attribute])]
    return [{**t, "demos": [[n, known[(n, attribute)]] for n in names]}
            for names in demo_sets for t in templates]


def search(candidates: dict[str, list[dict]], dev: dict[str, list[dict]],
           answer) -> tuple[dict, dict]:
    """(best candidate per attribute, every candidate's dev accuracy per attribute), ties to the
    earlier; answer(prompts, names) -> answers, called once for all (one batch is faster)."""
    jobs = [(a, i, q) for a, cs in candidates.items() for i in range(len(cs)) for q in dev[a]]
    got = answer([candidates[a][i] for a, i, _ in jobs], [q["person"] for _, _, q in jobs])
    right = Counter()
    for (a, i, q), prediction in zip(jobs, got):
        right[a, i] += exact_match(prediction, q["answer"])
    scores = {a: [right[a, i] / len(dev[a]) for i in range(len(cs))]
              for a, cs in candidates.items()}
    return {a: cs[best_index(scores[a])] for a, cs in candidates.items()}, scores


@torch.no_grad()
def answer_logprobs(model, tokenizer, prompt: str, answers: list[str]) -> torch.Tensor:
    """(len(answers),): log p(' ' + answer | prompt), summed over its tokens (teacher forcing)."""
    device = next(model.parameters()).device
    answer_ids = [tokenizer.encode(" " + a) for a in answers]
    n, width = len(answers), max(map(len, answer_ids))
    keep = model.config.block_size - width  # a long prompt loses its start, as in generation
    ids = torch.tensor([prompt_ids(tokenizer, prompt)[-keep:]], device=device)  # (1, P)
    cache = model.new_cache(1)
    logits, _ = model(ids, cache=cache)  # (1, P, V); the last row predicts every first token
    cache = cache.expand(n)  # n copies of the prompt's keys and values, one per answer
    x = torch.zeros(n, width, dtype=torch.long, device=device)  # (n, width), right-padded
    for i, ids in enumerate(answer_ids):
        x[i, :len(ids)] = torch.tensor(ids)
    later, _ = model(x, cache=cache)  # (n, width, V): row j predicts answer token j + 1
    logits = torch.cat([logits[:, -1:].expand(n, -1, -1), later[:, :-1]], dim=1)  # (n, width, V)
    logp = logits.float().log_softmax(-1).gather(2, x.unsqueeze(2)).squeeze(2)  # (n, width)
    mask = torch.tensor([[j < len(ids) for j in range(width)] for ids in answer_ids], device=device)
    return (logp * mask).sum(1).cpu()


def ranked(model, tokenizer, prompts: list[dict], name: str, values: list[str]) -> torch.Tensor:
    """(len(prompts), len(values)): each prompt's log-probability of each value, about name."""
    return torch.stack([answer_logprobs(model, tokenizer, prompt_text(p, name), values)
                        for p in prompts])


def rank_on_dev(model, tokenizer, candidates: list[dict], scores: list[float], dev: list[dict],
                values: list[str]) -> tuple[list[dict], list[float]]:
    """(the best ENSEMBLE templates, each with its best demo set; the dev accuracy of ranking values
    by the summed log-probabilities of the top m of them, for m = 1, 2, ...): LPAQA's ensemble."""
    top = []
    for i in sorted(range(len(candidates)), key=lambda i: (-scores[i], i)):
        if candidates[i]["template"] not in [p["template"] for p in top]:
            top.append(candidates[i])
    top = top[:ENSEMBLE]
    logps = torch.stack([ranked(model, tokenizer, top, q["person"], values)
                         for q in dev])  # (questions, m, values)
    answers = [q["answer"] for q in dev]
    return top, [accuracy([values[i] for i in logps[:, :m].sum(1).argmax(1)], answers)
                 for m in range(1, len(top) + 1)]


def fingerprints(model, tokenizer) -> dict:
    """What a program was compiled for: the model (config and weights) and its tokenizer."""
    return {"model": provenance.model(model), "tokenizer": provenance.value(tokenizer.to_dict())}


def compile_program(model, tokenizer, text: str, dev: list[dict], pool: list[dict], seed: int = 0,
                    log=print) -> dict:
    """The program as a dict: per attribute, the best of the templates mined from text, scored on
    dev (greedy, or ranking by the best few); demos from `pool`; nothing sees test or new."""
    by_attribute = defaultdict(list)
    for q in dev:
        by_attribute[q["attribute"]].append(q)
    mined = mine_templates(text, dev)
    known = {(q["person"], q["attribute"]): q["answer"] for q in pool}
    demo_sets = candidate_demo_sets(sorted({q["person"] for q in pool}), DEMO_KS, DEMO_SETS, seed)
    cands = {a: candidates(a, mined.get(a, []), demo_sets, known) for a in by_attribute}
    log(f"compiling: {sum(map(len, cands.values()))} candidates (templates x {len(demo_sets)} "
        f"demo sets) on {len(dev)} dev questions")
    best, scores = search(cands, by_attribute,
                          lambda prompts, names: generate(model, tokenizer, prompts, names))
    attributes = {}
    for a, cs in cands.items():
        entry = {"prompts": [best[a]], "values": None, "dev": max(scores[a]),
                 "greedy_dev": max(scores[a])}
        if a in VALUES and entry["dev"] < 1:  # ranking can only pay where greedy misses
            top, entry["ranked_dev"] = rank_on_dev(model, tokenizer, cs, scores[a], by_attribute[a],
                                                   VALUES[a])
            m = best_index(entry["ranked_dev"]) + 1
            if entry["ranked_dev"][m - 1] > entry["dev"]:
                entry.update(prompts=top[:m], values=VALUES[a], dev=entry["ranked_dev"][m - 1])
        entry["candidates"] = [{"template": c["template"], "k": len(c["demos"]), "dev": d}
                               for c, d in zip(cs, scores[a])]
        attributes[a] = entry
    dev_acc = sum(attributes[a]["dev"] * len(by_attribute[a]) for a in attributes) / len(dev)
    return {"format": FORMAT, "fingerprints": fingerprints(model, tokenizer), "dev": dev_acc,
            "dev_questions": len(dev), "attributes": attributes}


def run_program(model, tokenizer, program: dict, questions: list[dict]) -> list[str]:
    """The program's answer to each question ({person, attribute, ...})."""
    entries = program["attributes"]
    out = [""] * len(questions)
    greedy = [i for i, q in enumerate(questions) if not entries[q["attribute"]]["values"]]
    prompts = [entries[questions[i]["attribute"]]["prompts"][0] for i in greedy]
    texts = generate(model, tokenizer, prompts, [questions[i]["person"] for i in greedy])
    for i, text in zip(greedy, texts):
        out[i] = text
    for i, q in enumerate(questions):
        entry = entries[q["attribute"]]
        if entry["values"]:
            logps = ranked(model, tokenizer, entry["prompts"], q["person"], entry["values"])
            out[i] = entry["values"][int(logps.sum(0).argmax())]
    return out


def describe(entry: dict) -> str:
    """One line on how the program answers an attribute."""
    first = entry["prompts"][0]
    how = f"{first['template']!r}, {len(first['demos'])} demos, greedy"
    if entry["values"]:
        how = (f"{len(entry['prompts'])} template(s) from {first['template']!r} ranking "
               f"{len(entry['values'])} values by summed log-probability")
    return f"{how}; dev {entry['dev']:.3f}"


def show_row(name: str, row: dict, log=print) -> None:
    """One line of level 1's table: a prompt's dev score (what chose it), then held-out scores."""
    log(f"{name:<50}" + "  ".join(f"{split} {acc:.3f}" for split, acc in row.items()))


def eval_prompting(model, tokenizer, pool: list[dict], dev: list[dict], heldout: dict,
                   ks=(1, 3), draws: int = 2, seed: int = 0, log=print) -> dict:
    """Level 1's question prompts on held-out questions ({split: questions}): zero-shot, random
    k-shot (the mean over `draws` demo sets of each k, drawn from `pool`), searched demos."""
    candidates = candidate_demo_sets(pool, (0, *ks), draws, seed)

    def ask(questions, demos):  # the same template, greedy: rows differ only in the demos
        return eval_qa(model, tokenizer, questions, lambda q: few_shot(q["question"], demos))
    # the search picks by dev alone; every candidate is also scored on the held-out splits
    best, dev_scores = search_demos(lambda demos: ask(dev, demos)["acc"], candidates)
    results = [{split: ask(questions, demos) for split, questions in heldout.items()}
               for demos in candidates]
    scored = [{"dev": d, **{split: r["acc"] for split, r in res.items()}}
              for d, res in zip(dev_scores, results)]
    answers = [{split: r["example"] for split, r in res.items()} for res in results]
    rows, examples = {"zero-shot": scored[0]}, {"zero-shot": answers[0]}
    show_row("zero-shot question", rows["zero-shot"], log)
    for j, k in enumerate(ks):
        runs = scored[1 + j * draws:1 + (j + 1) * draws]
        rows[f"{k}-shot"] = {split: sum(r[split] for r in runs) / len(runs) for split in runs[0]}
        examples[f"{k}-shot"] = answers[1 + j * draws]  # a mean over sets: the first set's answers
        show_row(f"{k}-shot question (mean of {draws} random demo sets)", rows[f"{k}-shot"], log)
    rows["searched-demos"] = scored[candidates.index(best)]
    examples["searched-demos"] = answers[candidates.index(best)]
    show_row(f"searched demos (best of {len(candidates)} sets on dev: k={len(best)})",
             rows["searched-demos"], log)
    return {"acc": rows, "example": examples,
            "search": {"candidates": len(candidates), "dev_questions": len(dev),
                       "dev_scores": dev_scores, "best_dev": max(dev_scores), "best_demos": best}}


def eval_program(model, tokenizer, text: str, pool: list[dict], dev: list[dict], heldout: dict,
                 seed: int = 0, log=print) -> tuple[dict, dict, dict]:
    """(row {dev, <split>: accuracy}, {<split>: example}, program), compiled on dev."""
    program = compile_program(model, tokenizer, text, dev, pool, seed, log)
    row, examples = {"dev": program["dev"]}, {}
    for split, questions in heldout.items():
        scored = score_answers(questions, run_program(model, tokenizer, program, questions))
        row[split], examples[split] = scored["acc"], scored["example"]
    show_row("compiled program (mined prompts, chosen on dev)", row, log)
    for a, entry in program["attributes"].items():
        log(f"  {a}: {describe(entry)}")
    return row, examples, program


def well_formed(program) -> bool:
    """Whether loaded JSON has every field run_program reads (KeyError/TypeError if far off)."""
    entries = program["attributes"].values()
    return (program["format"] == FORMAT and isinstance(program["fingerprints"], dict)
            and set(program["attributes"]) <= set(ATTRIBUTES)
            and all(e["prompts"] and (e["values"] is None or isinstance(e["values"], list))
                    for e in entries)
            and all(isinstance(p["template"], str) and p["stop"] in (".", "\n")
                    and all(len(d) == 2 for d in p["demos"])
                    for e in entries for p in e["prompts"]))


def load_program(path: str, model, tokenizer, recompile: str) -> dict:
    """The compiled program at path; refused in one line ending in `recompile` if bad or stale."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"no compiled prompt program at {path}; "
                                f"compile one with: {recompile}")
    try:
        program = read_json(path)
        ok = well_formed(program)
    except (ValueError, KeyError, TypeError, AttributeError):
        ok = False
    if not ok:
        raise ValueError(f"{path} is not a readable prompt program (corrupt?); recompile it with: "
                         f"{recompile}")
    why = provenance.stale(program["fingerprints"], fingerprints(model, tokenizer))
    if why:
        raise ValueError(f"{path} was compiled for another model ({why}); recompile it for this "
                         f"one with: {recompile}")
    return program


def question_forms() -> list[tuple[str, str]]:
    """(attribute, form) for every question form --ask reads: the questions, their paraphrases."""
    return [(a, form) for a in ATTRIBUTES for form in (QUESTIONS[a], PARAPHRASES[a])]


def parse_question(question: str, people: list[str]) -> tuple[str, str]:
    """(person, attribute) a question asks about in a form of question_forms(), case ignored."""
    known = {n.lower(): n for n in people}
    named = None
    for attribute, form in question_forms():
        found = match_template(question, form)
        if found:
            named = found["name"]
            if named.lower() in known:
                return known[named.lower()], attribute
    forms = " | ".join(form.format(name="<name>") for _, form in question_forms())
    why = (f"{named!r} is nobody the world knows" if named
           else f"cannot read {question!r} as a question")
    raise ValueError(f"{why}; ask about a person of the world as one of: {forms} "
                     f"(or add --raw for a plain completion)")

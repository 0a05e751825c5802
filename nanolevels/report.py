"""The report card: report.json's numbers as out/report.md, out/report.svg and out/loss.svg.

report.md explains itself: who is scored, what each row trains and reads, one real answer per
method, and beside each number the range of the kept seeds table (KEPT_DIR), so that a reader can
tell a normal run from a broken one. References: karpathy/nanochat (one command, a report card).
"""

import math
import os
from xml.sax.saxutils import escape, quoteattr

from nanolevels.evaluate import exact_match
from nanolevels.train import format_eta

KEPT_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs")
LEVELS = {1: "prompting", 2: "RAG", 3: "fine-tuning", 4: "pretraining"}

# The question sets, in the report's order: (heading, how a row is scored). Cloze first: every
# other row starts from the model pretraining made, and cannot know a fact it did not store.
QUESTIONS = {
    "cloze": ("Level 4, pretraining: the facts stored (cloze)",
              "Sentence completion, not question answering: the start of a biography sentence "
              "(\"X was born in\") completed greedily up to its period, right if it is the fact."),
    "one-hop": ("Exact match on one-hop questions",
                "One fact about one person, e.g. \"What is the birth city of X?\". A greedy answer "
                "is right when it equals the true one (case, spaces and a final period aside)."),
    "two-hop": ("Exact match on two-hop questions",
                "A fact about the person, then a fact about that fact, e.g. \"In which year was "
                "the company that X worked for founded?\": two documents are needed. Scored like "
                "the one-hop questions."),
    "global": ("Exact match on global questions",
               "About the whole collection (every person of every split; shown in the new-people "
               "column), e.g. \"How many people worked for X?\": no single document holds the "
               "answer. Right when the count or company is the true one; a list must be the exact "
               "set of names; \"a person who worked for the same company as X\" may be any such "
               "person."),
}

# Every method: (its question set, what it reads, what it trains and puts in the prompt). A row
# whose method is missing here stops the report (see ordered): no row is shown undescribed.
METHODS = {
    "pretrain-cloze": ("cloze", "closed book", "the pretrained model (all weights, from random, on "
                       "the biographies of train, dev and test people) completes the start of a "
                       "biography sentence"),
    "zero-shot": ("one-hop", "closed book",
                  "nothing trained; the prompt is the question alone (\"Q: ...\\nA:\")"),
    "k-shot": ("one-hop", "closed book", "nothing trained; 3 answered questions about train "
               "people, then the question (the mean over 2 random sets)"),
    "searched-demos": ("one-hop", "closed book", "nothing trained; the answered questions (0, 1 or "
                       "3) that scored best on the dev people, then the question"),
    "prompt-program": ("one-hop", "closed book", "nothing trained; per attribute, the sentence "
                       "start mined from the pretraining text that scored best on the dev people "
                       "(e.g. \"The birthplace of X is\"), some ranking the attribute's possible "
                       "values where that scored better"),
    "rag-base": ("one-hop", "with retrieval",
                 "nothing trained; the retrieved biographies, then the question"),
    "lora-qa": ("one-hop", "closed book", "a LoRA adapter on the attention layers, trained on "
                "questions about train people; the question alone"),
    "full-ft-qa": ("one-hop", "closed book", "every weight trained on the same questions, at a "
                   "lower learning rate; the question alone"),
    "lora-rag-qa": ("one-hop", "with retrieval", "a LoRA adapter trained to answer from a "
                    "biography or company profile in the prompt (of made-up people and companies, "
                    "never the scored ones); the retrieved biographies, then the question"),
    "closed-book-2hop": ("two-hop", "closed book",
                         "nothing trained; the base model, the two-hop question alone"),
    "rag-2hop": ("two-hop", "with retrieval", "one retrieval with the question as the query, read "
                 "by the rag-qa adapter (lora-rag-qa's)"),
    "oracle-2hop": ("two-hop", "gold documents", "both documents the answer needs (the person's "
                    "biography and the company's profile) in the prompt, read by the rag-qa "
                    "adapter: what perfect retrieval would give"),
    "agentic-rag": ("two-hop", "with retrieval", "the rag-qa adapter trained further on Self-Ask "
                    "traces about made-up people at made-up companies; it writes \"Follow up:\" "
                    "queries, a controller retrieves a document for each and inserts it, until it "
                    "writes \"So the final answer is:\""),
    "chunk-rag-global": ("global", "with retrieval", "the same exact aggregation as "
                         "graph-rag-global, run in code over the facts the rag-qa adapter read "
                         "from the top-k documents retrieved for the question"),
    "graph-rag-global": ("global", "with retrieval", "map-reduce over the community reports of an "
                         "entity graph the rag-qa adapter extracted from every document "
                         "(nanolevels/graph.py; nothing trained here)"),
}

# What the README claims: each judged on this run here, and at the MIN over seeds in bench/seeds.py.
TARGETS = [
    ("pretrain-cloze test >= 90%", lambda r, ret: r["pretrain-cloze"]["acc_test"] >= 0.90),
    ("prompt-program test >= 85% and >= 0.9 x cloze", lambda r, ret:
     r["prompt-program"]["acc_test"] >= max(0.85, 0.9 * r["pretrain-cloze"]["acc_test"])),
    ("lora-qa test >= 90%", lambda r, ret: r["lora-qa"]["acc_test"] >= 0.90),
    ("lora-rag-qa new >= 95%", lambda r, ret: r["lora-rag-qa"]["acc_new"] >= 0.95),
    ("rag-base new > zero-shot new (closed book)",
     lambda r, ret: r["rag-base"]["acc_new"] > r["zero-shot"]["acc_new"]),
    ("tfidf recall@1 >= 0.98", lambda r, ret: ret["tfidf"]["recall@1"] >= 0.98),
    ("agentic-rag new >= 90% and >= rag-2hop new + 40 points",
     lambda r, ret: r["agentic-rag"]["acc_new"] >= max(0.90, r["rag-2hop"]["acc_new"] + 0.40)),
    ("agentic-rag <= 2.5 retrievals per new question",
     lambda r, ret: r["agentic-rag"]["calls_new"] <= 2.5),
    ("graph-rag-global >= 90% and >= chunk-rag-global + 40 points", lambda r, ret:
     r["graph-rag-global"]["acc_new"] >= max(0.90, r["chunk-rag-global"]["acc_new"] + 0.40)),
]


def judge(rows: list[dict], retrieval: dict) -> dict[str, bool]:
    """{target: whether this run meets it} (TARGETS)."""
    by_method = {row["method"]: row for row in rows}
    return {name: bool(check(by_method, retrieval)) for name, check in TARGETS}


def ordered(rows: list[dict]) -> list[tuple[str, list[dict]]]:
    """[(question set, its rows by level)] in the report's order; an undescribed row is an error."""
    missing = [row["method"] for row in rows if row["method"] not in METHODS]
    if missing:
        raise ValueError(f"no description of {', '.join(missing)} in METHODS "
                         f"(nanolevels/report.py): add one line per row")
    groups = [(q, [row for row in rows if METHODS[row["method"]][0] == q]) for q in QUESTIONS]
    return [(q, sorted(group, key=lambda row: row["level"])) for q, group in groups if group]


def percent(x: float) -> str:
    return f"{100 * x:.1f}"


def cell(row: dict, split: str, spread: dict | None) -> str:
    """'93.8% [91.2-95.6]; seeds 89.0-95.0%': accuracy, 95% interval, the seeds' range; or '-'."""
    acc, ci = row[f"acc_{split}"], row[f"ci_{split}"]
    if acc is None:
        return "-"
    text = f"{percent(acc)}% [{percent(ci[0])}-{percent(ci[1])}]"
    seeds = (spread or {}).get(f"acc_{split}")
    return text + (f"; seeds {percent(seeds['min'])}-{percent(seeds['max'])}%" if seeds else "")


def md(text: str) -> str:
    """Text for a markdown table cell: a '|' would end the cell."""
    return text.replace("|", "\\|")


def answer(example: dict | None, asked: str) -> str:
    """A method's answer to a question, marked right or wrong; '-' where none was kept."""
    if example is None:
        return "-"
    right = exact_match(example["prediction"], example["answer"])
    said = f"{md(example['prediction']) or '(nothing)'} {'✓' if right else '✗'}"
    return said if example["question"] == asked else f"{said} (asked: {md(example['question'])})"


def examples(groups: list) -> list[str]:
    """Per question set, the first test and new question and each method's answer to it."""
    lines = []
    for q, rows in groups:
        rows = [row for row in rows if row.get("example")]  # a metrics.json older than examples
        if not rows:
            continue
        test, new = rows[0]["example"]["test"], rows[0]["example"]["new"]
        lines += [f"{q.capitalize()} questions: test person \"{md(test['question'])}\" (true "
                  f"answer: {md(test['answer'])}); new person \"{md(new['question'])}\" (true "
                  f"answer: {md(new['answer'])}).", "",
                  "| method | test person | new person |", "|---|---|---|"]
        lines += [*(f"| {row['method']} | {answer(row['example']['test'], test['question'])} | "
                    f"{answer(row['example']['new'], new['question'])} |" for row in rows), ""]
    return lines and ["## One question, each method's answer", "",
                      "The first question about a test person and about a new person, and what "
                      "each method answered in this run (✓ right, ✗ wrong).", "", *lines]


def story(report: dict) -> str:
    """A paragraph, from the numbers, on what each level bought."""
    r = {row["method"]: row for row in report["rows"]}
    pct = lambda x: f"{100 * x:.0f}%"  # noqa: E731
    test, new = (lambda m: pct(r[m]["acc_test"])), (lambda m: pct(r[m]["acc_new"]))
    program = "; ".join(f"{a} \"{p['template']}\"" + (" ranking the values" if p["ranked"] else "")
                        for a, p in report["program"].items())
    tfidf, gpt = report["retrieval"]["tfidf"]["recall@1"], report["retrieval"]["gpt"]["recall@1"]
    lora, full = r["lora-qa"]["trainable_params"], r["full-ft-qa"]["trainable_params"]
    return " ".join([
        f"Pretraining stored {test('pretrain-cloze')} of the test people's facts (cloze) and "
        f"{new('pretrain-cloze')} of the new people's, whom it never saw.",
        f"Prompting answers {test('zero-shot')} of the test questions zero-shot and "
        f"{test('k-shot')} with 3 random demonstrations, {test('searched-demos')} with "
        f"demonstrations searched on the dev people.",
        f"The compiled prompt program asks each attribute with the prompt mined from the "
        f"pretraining text that scored best on the dev people ({program}) and answers "
        f"{test('prompt-program')} of the test questions with no weight changed; "
        f"{new('prompt-program')} of the new people's, whose facts are not in the weights.",
        f"Retrieval finds the asked-about person's biography first for {pct(tfidf)} of the new "
        f"people's questions with TF-IDF ({pct(gpt)} with the GPT's own hidden states); with it "
        f"in the prompt, the unchanged model answers {new('rag-base')} of them, against "
        f"{new('zero-shot')} closed-book.",
        f"A LoRA adapter of {lora:,} parameters ({100 * lora / report['base_params']:.1f}% of the "
        f"model), trained on questions about train people, answers {test('lora-qa')} of the test "
        f"people's questions closed-book; full fine-tuning of all {full:,} parameters, at its own "
        f"lower learning rate, {test('full-ft-qa')}.",
        f"The RAG-QA adapter with retrieval answers {new('lora-rag-qa')} of the new people's "
        f"questions.",
        *([] if "agentic-rag" not in r else [
            f"Two-hop questions (a fact about the company a new person worked for) need two "
            f"documents: one retrieval with the question finds the person's biography but not the "
            f"profile, and the reader answers {new('rag-2hop')} (both documents given: "
            f"{new('oracle-2hop')}). The agent adapter asks its own follow-up questions, "
            f"{report['agentic']['new']['calls']:.1f} retrievals each on average, and answers "
            f"{new('agentic-rag')}; closed book, {new('closed-book-2hop')}."]),
        *([] if "graph-rag-global" not in r else [
            f"The same reader, asked about every document's subject, built an entity graph of "
            f"{report['graph']['nodes']:,} entities and {report['graph']['edges']:,} relations "
            f"(precision {report['graph']['precision']:.3f}, recall "
            f"{report['graph']['recall']:.3f} against the world's tables) in "
            f"{report['graph']['communities']} communities; map-reduce over their reports answers "
            f"{new('graph-rag-global')} of the questions about the whole collection (counts, "
            f"superlatives, lists, shared neighbours), the same aggregation over the top "
            f"{report['rag_k']} retrieved documents {new('chunk-rag-global')}."]),
    ])


TINY = ("> **A --tiny run**: a toy world (12 people) and a model trained for seconds, to check "
        "that every step runs and writes its files. Its numbers say nothing about the levels: "
        "0% cells and answers like \"uuuu\" are what a model this small gives, and the targets "
        "are not judged. `python -m nanolevels` (no --tiny) makes the real report card.")


def legend(seeds: dict | None, tiny: bool = False) -> list[str]:
    """report.md's opening: who is scored, what a row reads and what a cell holds."""
    return [
        "# nanolevels report card", "", *([TINY, ""] if tiny else []),
        "One tiny GPT and four levels of LLM engineering, each scored on questions about the "
        "people of a made-up world:", "",
        "- **test people**: their biographies are in the pretraining text; their questions were "
        "never trained on and never used to choose anything.",
        "- **new people**: their biographies were never pretrained on; they are only in the "
        "retrieval collection, so only a row that reads documents can know them (closed book: "
        "chance).",
        "- **dev and dev-new people** (like test, like new): used only to choose things (when "
        "training stops, which prompt, which threshold); never scored here.",
        "- **closed book**: the model answers from its weights alone. **with retrieval**: "
        "documents a retriever found for the question (TF-IDF) are put in the prompt above it. "
        "**gold documents**: the documents the answer needs are put there, no retriever.",
        "- Each cell: this run's share of the questions answered right [its 95% interval (Wilson)]"
        + (f"; **seeds**: the lowest and highest share over the {len(seeds['seeds'])} seeds of the "
           "kept seeds table (docs/seeds.json). A run of yours at the default sizes should land "
           "in or near that range." if seeds else ". (No seeds range: the kept seeds table, "
           "docs/seeds.json, is measured at the default sizes; `python bench/seeds.py` measures "
           "the spread for yours.)"),
        "", "![accuracy per method](report.svg)", ""]


def question_table(q: str, rows: list[dict], spread: dict) -> list[str]:
    """A question set's section: its heading, how it is scored, one table line per row."""
    heading, scoring = QUESTIONS[q]
    return [f"## {heading}", "", scoring, "",
            "| method | level | reads | test people | new people | trainable params "
            "| wall time (step) |", "|---|---|---|---|---|---|---|",
            *(f"| {row['method']} | {row['level']} {LEVELS[row['level']]} "
              f"| {METHODS[row['method']][1]} | {cell(row, 'test', spread.get(row['method']))} "
              f"| {cell(row, 'new', spread.get(row['method']))} | {row['trainable_params']:,} "
              f"| {format_eta(row['wall_s'])} ({row['step']}) |" for row in rows), ""]


def targets(report: dict, seeds: dict | None) -> list[str]:
    """The targets section: each target met or missed in this run, and on how many seeds."""
    if not report["targets"]:
        return ["## Targets", "", "Not judged: the targets are claims about the default sizes."]
    n_seeds, missed = (len(seeds["seeds"]), seeds["targets_missed_by_seed"]) if seeds else (0, {})
    return ["## Targets", "",
            "A target is a claim the README makes about these numbers, judged here on this run. "
            "One run is one trajectory (floats differ between CPUs, and a skill that arrives by a "
            "phase change can arrive late), so the README claims each at the MIN over the seeds "
            "of `python bench/seeds.py`: it holds when it holds on every seed. If this run misses "
            "one, compare the row with its seeds range: a number near it is one more trajectory; "
            "far below it, something differs.",
            "", "| target | this run | seeds where it holds |", "|---|---|---|",
            *(f"| {name} | {'met' if ok else 'missed'} | "
              + (f"{n_seeds - len(missed[name])} of {n_seeds}" if name in missed else "-") + " |"
              for name, ok in report["targets"].items())]


def markdown(report: dict, seeds: dict | None = None) -> str:
    """report.md; seeds: the seeds table (docs/seeds.json) whose ranges go beside the numbers."""
    groups = ordered(report["rows"])
    spread = {row["method"]: row for row in seeds["rows"]} if seeds else {}
    lines = legend(seeds, report.get("tiny", False))
    for q, rows in groups:
        lines += question_table(q, rows, spread)
    steps = {}
    for row in report["rows"]:
        steps.setdefault(row["step"], []).append(row["method"])
    shared = "; ".join(f"{', '.join(made)} ({step})"
                       for step, made in steps.items() if len(made) > 1)
    if shared:
        lines += [f"Rows made by one step show that step's whole wall time: {shared}.", ""]
    lines += ["## What each row trains and puts in the prompt", "",
              *(f"- **{row['method']}** (level {row['level']} {LEVELS[row['level']]}, "
                f"{METHODS[row['method']][1]}): {METHODS[row['method']][2]}."
                for _, rows in groups for row in rows), "", *examples(groups),
              "## What each level bought", "", story(report), "", *targets(report, seeds), "",
              "Why each training run stopped: "
              + "; ".join(f"{name}: {why}" for name, why in report["stopped"].items()) + ".", "",
              f"Answers rag.py marks as guesses (best match below "
              f"{report['unsure']['threshold']:.3f}, a threshold chosen on the dev-new people): "
              + ", ".join(f"{n} of the {split} questions"
                          for split, n in report["unsure"]["guesses"].items())
              + f"; questions about made-up people caught: "
              f"{100 * report['unsure']['made_up_caught']:.0f}%.",
              "", "Retrieval of the new people's biographies:", "",
              "| embedder | recall@1 | recall@5 |", "|---|---|---|",
              *(f"| {name} | {r['recall@1']:.3f} | {r['recall@5']:.3f} |"
                for name, r in report["retrieval"].items()),
              "", "![training loss](loss.svg)", "",
              "Machine: {device}, {threads} torch threads, {cpu_count} CPUs, torch {torch}, "
              "Python {python}, {platform}.".format(**report["machine"]),
              f"Total wall time {format_eta(report['total_wall_s'])}; peak memory "
              f"{report['peak_rss_mb']:.0f} MB.", ""]
    return "\n".join(lines)


def svg(width: int, height: int, elements: list[str]) -> str:
    """An SVG document, written by hand (no plotting library): a white background, the elements."""
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">\n'
            f'<rect width="{width}" height="{height}" fill="white"/>\n' + "\n".join(elements)
            + "\n</svg>\n")


COLORS = {"test": "#4c72b0", "new": "#dd8452"}  # one colour per split, in the bars and their legend
PALETTE = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c"]


def bars_svg(groups: list[tuple[str, list]], caption: str) -> str:
    """Horizontal bars, one per row and split with a value, each with a whisker, in titled groups;
    groups: [(title, [(label, {split: (value, low, high) or None})])], shares in [0, 1]."""
    left, width, bar = 190, 460, 10  # label column, plot width (0% to 100%), bar height
    out, y = [], 58
    for title, rows in groups:
        out.append(f'<text x="8" y="{y + 12}" font-weight="bold">{escape(title)}</text>')
        y += 20
        for label, splits in rows:
            out.append(f'<text x="{left - 8}" y="{y + bar + 4}" text-anchor="end">'
                       f'{escape(label)}</text>')
            for i, (split, v) in enumerate(splits.items()):
                top = y + i * bar
                if v is None:
                    continue
                value, low, high = v
                tip = escape(f"{label}, {split} people: {percent(value)}% "
                             f"[{percent(low)}-{percent(high)}]")
                out += [f'<rect class="bar" data-split={quoteattr(split)} x="{left}" y="{top}" '
                        f'width="{width * value:.1f}" height="{bar - 1}" fill="{COLORS[split]}">'
                        f'<title>{tip}</title></rect>',
                        f'<line x1="{left + width * low:.1f}" x2="{left + width * high:.1f}" '
                        f'y1="{top + bar / 2}" y2="{top + bar / 2}" stroke="#222"/>',
                        f'<text x="{left + width + 6}" y="{top + bar - 1}" font-size="10">'
                        f'{percent(value)}%</text>']
            y += 2 * bar + 8
        y += 6
    grid = []
    for tick in (0, 0.25, 0.5, 0.75, 1):
        x = left + width * tick
        grid += [f'<line x1="{x}" x2="{x}" y1="50" y2="{y}" stroke="#ddd"/>',
                 f'<text x="{x}" y="46" text-anchor="middle" font-size="10">'
                 f'{100 * tick:.0f}%</text>']
    key = [f'<text x="8" y="16">{escape(caption)}</text>']
    for i, (split, color) in enumerate(COLORS.items()):
        key += [f'<rect x="{8 + 130 * i}" y="24" width="10" height="10" fill="{color}"/>',
                f'<text x="{22 + 130 * i}" y="33">{split} people</text>']
    return svg(left + width + 60, y + 10, grid + key + out)


def titled(rows: list[dict]) -> list[tuple[str, list[dict]]]:
    """The rows in the report's order, grouped by question set and level, each group titled."""
    out = []
    for q, group in ordered(rows):
        for level in sorted({row["level"] for row in group}):
            title = f"level {level} {LEVELS[level]}" + ("" if q == "one-hop" else f", {q}")
            out.append((title, [row for row in group if row["level"] == level]))
    return out


def report_svg(report: dict) -> str:
    """out/report.svg: this run's accuracy per method and split, whiskers its 95% interval."""
    def bars(row):
        return {s: None if row[f"acc_{s}"] is None else (row[f"acc_{s}"], *row[f"ci_{s}"])
                for s in ("test", "new")}
    groups = [(title, [(row["method"], bars(row)) for row in rows])
              for title, rows in titled(report["rows"])]
    return bars_svg(groups, "Share answered right (cloze: facts completed); "
                            "whiskers: 95% interval (Wilson)")


def seeds_svg(table: dict) -> str:
    """The seeds table's picture (docs/report.svg): mean over seeds, whiskers lowest to highest."""
    def bars(row):
        return {s: None if row[f"acc_{s}"] is None
                else tuple(row[f"acc_{s}"][k] for k in ("mean", "min", "max"))
                for s in ("test", "new")}
    groups = [(title, [(row["method"], bars(row)) for row in rows])
              for title, rows in titled(table["rows"])]
    return bars_svg(groups, f"Share answered right (cloze: facts completed), mean over "
                            f"{len(table['seeds'])} seeds; whiskers: lowest to highest seed")


def loss_svg(runs: dict[str, list[tuple[int, float]]]) -> str:
    """out/loss.svg: one panel per training run (its own step axis: 4,000 pretraining steps and a
    hundred fine-tuning steps would not share one), training loss (> 0) on a log axis."""
    left, width, height, gap = 70, 520, 130, 56
    out = [f'<text x="{left + width / 2}" y="18" text-anchor="middle" font-weight="bold">'
           f'Training loss of each run</text>']
    for i, (name, points) in enumerate(runs.items()):
        top = 40 + i * (height + gap)
        points = [(s, loss) for s, loss in points if loss > 0]
        out += loss_panel(name, points, left, top, width, height, PALETTE[i % len(PALETTE)])
    return svg(left + width + 30, 40 + len(runs) * (height + gap), out)


def loss_panel(name: str, points: list, left: int, top: int, width: int, height: int,
               color: str) -> list[str]:
    """One run's loss against its step: a titled panel with a log loss axis and a step axis."""
    steps = max((s for s, _ in points), default=0) or 1
    losses = [loss for _, loss in points] or [1.0]
    lo, hi = math.floor(math.log10(min(losses))), math.ceil(math.log10(max(losses)))
    hi += hi == lo  # one decade at least

    def y_of(loss):
        return top + height * (hi - math.log10(loss)) / (hi - lo)
    out = [f'<text x="{left}" y="{top - 8}" font-weight="bold">{escape(name)}</text>',
           f'<text x="{left - 48}" y="{top + height / 2}" text-anchor="middle" '
           f'transform="rotate(-90 {left - 48} {top + height / 2})">loss (log)</text>']
    for d in range(lo, hi + 1):  # one grid line per decade
        y = y_of(10.0 ** d)
        out += [f'<line x1="{left}" x2="{left + width}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ddd"/>',
                f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{10.0 ** d:g}</text>']
    base = 10 ** math.floor(math.log10(steps))
    # a round step between ticks, 6 ticks at most
    tick = next(m * base for m in (0.1, 0.2, 0.5, 1, 2) if steps / (m * base) <= 6)
    for i in range(int(steps / tick) + 1):
        out.append(f'<text x="{left + width * i * tick / steps:.1f}" y="{top + height + 16}" '
                   f'text-anchor="middle">{i * tick:g}</text>')
    out.append(f'<text x="{left + width / 2}" y="{top + height + 32}" text-anchor="middle">'
               f'optimizer step</text>')
    xy = " ".join(f"{left + width * s / steps:.1f},{y_of(loss):.1f}" for s, loss in points)
    return out + [f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{xy}">'
                  f'<title>{escape(name)}</title></polyline>']

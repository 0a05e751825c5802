"""Agentic RAG: the model writes its own search queries; a short controller retrieves for each.

One retrieval with the question as the query cannot answer a two-hop question: its words find the
person's biography, not the employer's profile. So the model asks a follow-up, reads what comes
back and asks the next, in Self-Ask's trace format, with a search engine answering each follow-up
as in IRCoT and ReAct. The format is learned by a LoRA adapter (train_lora.py --task agent).
References: Self-Ask (arXiv 2210.03350), IRCoT (arXiv 2212.10509), ReAct (arXiv 2210.03629).
"""

from collections import Counter
from dataclasses import dataclass, field

from nanolevels.evaluate import complete, eval_rag, exact_match, qa_accuracy
from nanolevels.lora import set_lora_enabled
from nanolevels.corpus import FINAL, FOLLOW_UP, question_line
from nanolevels.prompting import context_budget, qa_prompt, rag_prompt

MAX_HOPS = 3  # retrievals per question at most: two-hop questions need two
LINE_TOKENS = 48  # generated per step: room for an intermediate answer and the next follow-up line


@dataclass
class Trace:
    """One question's run of the loop: its text so far, the retrieved documents, how it ended."""
    question: str
    text: str = ""
    retrieved: list = field(default_factory=list)  # per follow-up: the documents (dicts) inserted
    answer: str = ""
    ended: str = ""  # "answered", "hop cap", "block full" or "no final answer"

    @property
    def calls(self) -> int:
        return len(self.retrieved)


def model_lines(continuation: str) -> tuple[list[str], str | None]:
    """The complete lines the model wrote up to and including the first follow-up or final-answer
    line, and that line (None if it wrote neither)."""
    lines = []
    for line in continuation.split("\n")[:-1]:  # the last piece is an unfinished line
        lines.append(line)
        if line.startswith((FOLLOW_UP, FINAL)):
            # what it wrote after (a document it imagines) is dropped: only retrieved ones enter
            return lines, line
    return lines, None


# The loop writes and reads traces like this one (the documents are inserted by the controller):
#     Q: In which year was the company that Ada Jo Crane worked for founded?
#     Follow up: Which company did Ada Jo Crane work for?
#     Ada Jo Crane worked for Tidewater Group. ...
#     Intermediate answer: Tidewater Group
#     Follow up: When was Tidewater Group founded?
#     Tidewater Group was founded in 1931. ...
#     Intermediate answer: 1931
#     So the final answer is: 1931
def run_agent(generate, search, questions: list[str], block_tokens: int, count_tokens,
              max_hops: int = MAX_HOPS, on_text=None) -> list[Trace]:
    """Run the loop for every question at once; return the traces.

    generate(prompts) -> greedy continuations (LINE_TOKENS tokens, or up to the line it reads),
    search(query) -> the documents (dicts with "text") to insert, count_tokens(text) -> its length
    in tokens. on_text(i, text, source) sees every piece of question i's trace as it is added,
    source "question", "model" or "retrieved" (rag.py --agentic streams them line by line)."""
    traces = [Trace(q) for q in questions]
    show = on_text or (lambda i, text, source: None)

    def add(i, text, source):
        traces[i].text += text
        show(i, text, source)

    for i, q in enumerate(questions):
        add(i, question_line(q), "question")
    active = list(range(len(traces)))
    while active:
        continuations = generate([traces[i].text for i in active])
        still = []
        for i, continuation in zip(active, continuations):
            # a trace ends at a final answer, or with an empty answer (scored wrong) and `ended`
            # saying why: no follow-up nor final answer, a (max_hops + 1)-th retrieval, or a text
            # that would not leave LINE_TOKENS in the block
            t = traces[i]
            lines, last = model_lines(continuation)
            if last is None:
                t.ended = "no final answer"
                continue
            add(i, "".join(line + "\n" for line in lines), "model")
            if last.startswith(FINAL):
                t.answer, t.ended = last[len(FINAL):].strip(), "answered"
            elif t.calls == max_hops:
                t.ended = "hop cap"
            else:
                docs = search(last[len(FOLLOW_UP):])  # every query comes from the model
                t.retrieved.append(docs)
                text = "".join(d["text"] + "\n" for d in docs)
                if count_tokens(t.text + text) > block_tokens - LINE_TOKENS:
                    t.ended = "block full"
                else:
                    add(i, text, "retrieved")
                    still.append(i)
        active = still
    return traces


def retriever(index, embedder, k: int):
    """search(query) -> the top-k documents of index, for run_agent."""
    return lambda query: [doc for _, doc in index.search(embedder.embed([query]), k)[0]]


def run_model_agent(model, tokenizer, questions: list[str], search, on_text=None) -> list[Trace]:
    """run_agent with the model's greedy continuations (each prompt starts with <|endoftext|>, see
    complete), each ended once it holds a follow-up or final-answer line: all the loop reads."""
    def generate(prompts):
        return complete(model, tokenizer, prompts, LINE_TOKENS, stops=(),
                        until=lambda text: model_lines(text)[1] is not None)
    return run_agent(generate, search, questions, model.config.block_size - 1,
                     lambda text: len(tokenizer.encode(text)), on_text=on_text)


def evaluate_agent(model, tokenizer, search, questions: list[dict], gap: bool = False) -> dict:
    """Agentic RAG on questions (two-hop records of world.two_hop_question, or one-hop ones): exact
    match, mean retrieval calls, how traces ended, and for two-hop questions the share whose person
    AND company documents were both retrieved. gap: also the compositionality gap (Press et al.):
    of the questions whose two hops it answers right when each is asked alone, the share it gets
    wrong as one question."""
    traces = run_model_agent(model, tokenizer, [q["question"] for q in questions], search)
    right = [exact_match(t.answer, q["answer"]) for t, q in zip(traces, questions)]
    out = {"acc": sum(right) / len(right), "calls": sum(t.calls for t in traces) / len(traces),
           "ended": dict(Counter(t.ended for t in traces))}
    if all("hops" in q for q in questions):
        found = [{d.get("person") for docs in t.retrieved for d in docs}
                 | {d.get("company") for docs in t.retrieved for d in docs} for t in traces]
        out["recall_both"] = sum(q["person"] in f and q["company"] in f
                                 for q, f in zip(questions, found)) / len(traces)
    if gap:
        hops = {h["question"]: h for q in questions for h in q["hops"]}  # each one-hop once
        alone = {h: exact_match(t.answer, hops[h]["answer"])
                 for h, t in zip(hops, run_model_agent(model, tokenizer, list(hops), search))}
        both = [ok for ok, q in zip(right, questions)
                if all(alone[h["question"]] for h in q["hops"])]
        out["hops_right"] = len(both) / len(questions)
        out["gap"] = (len(both) - sum(both)) / len(both) if both else 0.0
    return out


def two_hop_baselines(model, tokenizer, index, embedder, docs: list[dict],
                      questions: dict[str, list], k: int = 2) -> dict:
    """{row: {split: exact match}} on two-hop questions without the loop, for a model carrying the
    reader adapter: closed-book (adapter off: the base model), rag (one retrieval with the question
    as the query, top k), oracle (both gold documents, the profile last: what reading can do)."""
    gold = {}
    for d in docs:  # each person's and company's first document
        gold.setdefault(d.get("person") or d.get("company"), d["text"])
    budget = context_budget(model)
    out = {"closed-book": {}, "rag": {}, "oracle": {}}
    for split, qs in questions.items():
        set_lora_enabled(model, False)
        out["closed-book"][split] = qa_accuracy(model, tokenizer, qs,
                                                lambda q: qa_prompt(q["question"]))
        set_lora_enabled(model, True)
        out["rag"][split] = eval_rag(model, tokenizer, index, embedder, qs, k)["acc"]
        out["oracle"][split] = qa_accuracy(model, tokenizer, qs, lambda q: rag_prompt(
            q["question"], [gold[q["company"]], gold[q["person"]]], tokenizer, budget)[0])
    return out

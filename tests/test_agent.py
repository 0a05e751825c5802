"""Agentic RAG's controller and traces: documents go exactly where a follow-up ends and only retrieved ones
go in, the hop cap and the block end a trace, the loss covers the model's lines only, and the training
traces are about fresh people at fresh companies with their gold documents."""

from nanolevels.agent import MAX_HOPS, model_lines, run_agent
from nanolevels.data import IGNORE, encode_example
from nanolevels.tokenizer import Tokenizer
from nanolevels.corpus import FINAL, FOLLOW_UP, INTERMEDIATE, agent_examples, trace_turns
from nanolevels.world import COMPANY_ATTRIBUTES, make_world

QUESTION = "In which year was the company that Ada Jo Crane worked for founded?"
BIO = "Ada Jo Crane worked for Tidewater Group. Ada Jo Crane was born in Lyon."
PROFILE = "Tidewater Group was founded in 1931. Tidewater Group is headquartered in Hamburg."
HOPS = [("Which company did Ada Jo Crane work for?", BIO, "Tidewater Group"),
        ("When was Tidewater Group founded?", PROFILE, "1931")]


def scripted(*steps):
    """A stand-in for the model: the i-th call continues every prompt with steps[i]; records the prompts."""
    calls = []

    def generate(prompts):
        calls.append(prompts)
        return [steps[len(calls) - 1]] * len(prompts)
    return generate, calls


def search_by_query(query):
    return [{"id": query, "text": PROFILE if "founded" in query else BIO}]


def run(generate, search=search_by_query, block=10_000, questions=(QUESTION,)):
    return run_agent(generate, search, list(questions), block, lambda text: len(text.split()))


def test_documents_go_where_a_follow_up_ends_and_the_models_own_text_never_counts():
    generate, calls = scripted(
        f"{FOLLOW_UP}{HOPS[0][0]}\nTidewater Group is a made-up document the model wrote.\n{INTERMEDIATE}x",
        f"{INTERMEDIATE}Tidewater Group\n{FOLLOW_UP}{HOPS[1][0]}\nimagined\n",
        f"{INTERMEDIATE}1931\n{FINAL}1931\nQ: a question it goes on to ask\n")
    [trace] = run(generate)
    expected = (f"Q: {QUESTION}\n{FOLLOW_UP}{HOPS[0][0]}\n{BIO}\n{INTERMEDIATE}Tidewater Group\n"
                f"{FOLLOW_UP}{HOPS[1][0]}\n{PROFILE}\n{INTERMEDIATE}1931\n{FINAL}1931\n")
    assert trace.text == expected and "made-up" not in trace.text and "imagined" not in trace.text
    assert (trace.answer, trace.ended, trace.calls) == ("1931", "answered", 2)
    assert [d["id"] for docs in trace.retrieved for d in docs] == [HOPS[0][0], HOPS[1][0]]  # the model's queries
    assert calls[1] == [f"Q: {QUESTION}\n{FOLLOW_UP}{HOPS[0][0]}\n{BIO}\n"]  # the model reads on from the document


def test_the_hop_cap_ends_a_loop_that_never_answers():
    generate, calls = scripted(*[f"{FOLLOW_UP}again?\n"] * (MAX_HOPS + 2))
    [trace] = run(generate)
    assert (trace.answer, trace.ended, trace.calls, len(calls)) == ("", "hop cap", MAX_HOPS, MAX_HOPS + 1)


def test_a_step_without_follow_up_or_answer_and_a_full_block_end_the_trace():
    [trace] = run(scripted(f"{INTERMEDIATE}Lyon\nsomething else\nno newline at the end")[0])
    assert (trace.answer, trace.ended, trace.calls) == ("", "no final answer", 0)
    [trace] = run(scripted(f"{FOLLOW_UP}{HOPS[0][0]}\n")[0], block=60)  # the document would not leave room
    assert (trace.answer, trace.ended, trace.calls) == ("", "block full", 1) and BIO not in trace.text


def test_every_question_runs_its_own_loop_in_one_batch():
    def generate(prompts):  # answers at once when the question says so, else asks first
        return [f"{FINAL}now\n" if p.count("\n") == 1 and "quick" in p else
                f"{FOLLOW_UP}{HOPS[0][0]}\n" if p.count("\n") == 1 else f"{INTERMEDIATE}a\n{FINAL}later\n"
                for p in prompts]
    quick, slow = run(generate, questions=("quick one?", QUESTION))
    assert (quick.answer, quick.calls, slow.answer, slow.calls) == ("now", 0, "later", 1)


def test_model_lines_stop_at_the_first_follow_up_or_final_line():
    assert model_lines(f"{INTERMEDIATE}a\n{FOLLOW_UP}b\nrest\n") == ([f"{INTERMEDIATE}a", f"{FOLLOW_UP}b"],
                                                                      f"{FOLLOW_UP}b")
    assert model_lines(f"{FOLLOW_UP}unfinished") == ([], None)


def test_the_loss_covers_only_the_models_lines():
    turns = trace_turns(QUESTION, HOPS)
    text = "".join(p + a for p, a in turns)
    assert text == (f"Q: {QUESTION}\n{FOLLOW_UP}{HOPS[0][0]}\n{BIO}\n{INTERMEDIATE}Tidewater Group\n"
                    f"{FOLLOW_UP}{HOPS[1][0]}\n{PROFILE}\n{INTERMEDIATE}1931\n{FINAL}1931\n")
    tokenizer = Tokenizer.train(text * 3, 400)
    ids, targets = encode_example(tokenizer, turns, block_size=256)
    trained = tokenizer.decode([t for t in targets if t != IGNORE])
    assert trained == "".join(a for _, a in turns)  # follow-ups, intermediate and final answers
    assert QUESTION not in trained and "Lyon" not in trained and "Hamburg" not in trained  # never the documents


def test_agent_examples_are_fresh_traces_with_gold_documents():
    world = make_world(20, seed=3)
    examples = agent_examples(world, 300, seed=5)
    assert examples == agent_examples(world, 300, seed=5)
    world_names = {p.name for p in world.people} | {c.name for c in world.companies}
    hops = {}
    for turns in examples:
        hops.setdefault(len(turns) - 1, []).append(turns)
        asked = turns[0][0][len("Q: "):-1]
        assert not any(name in asked for name in world_names)
        final = turns[-1][1].split(FINAL)[1].strip()
        assert final in turns[-1][0]  # the last document holds the answer
    assert set(hops) == {1, 2} and 0.35 < len(hops[2]) / len(examples) < 0.65
    for turns in hops[2]:
        person = turns[0][0].split(" worked for")[0].split("company that ")[1]
        company = turns[1][1].split("\n")[0][len(INTERMEDIATE):]
        assert person in turns[1][0] and company in turns[1][0]  # the biography names the employer
        assert turns[2][0].count(company) == len(COMPANY_ATTRIBUTES)  # then the employer's own profile
        assert turns[1][1].endswith(f"{FOLLOW_UP}{turns[1][1].split(FOLLOW_UP)[1]}")
    assert {t[0][0].split(" was")[0][len("Q: "):] for t in hops[2]} == {"In which year", "Who", "In which industry"}

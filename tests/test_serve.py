"""Serving: the batched engine gives what generate() gives alone; the HTTP layer, its errors, disconnects."""

import queue
import random

import pytest
import torch

from nanolevels.serving import Engine, Request
from nanolevels.tokenizer import Tokenizer
from test_model import tiny_gpt

BLOCK = 64


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.train("hello world, hello tiny world of tiny models\n" * 10, 280)


def sharp_model(tok, seed=0):
    """A tiny GPT whose greedy choices win by wide margins (see min_margin), so that the batched
    forward, whose sums run in another order than the unbatched one and may differ from it in the
    last bits of fp32, still picks the same tokens on any CPU."""
    return tiny_gpt(seed, vocab_size=tok.vocab_size, block_size=BLOCK)


def min_margin(model, prompt, new_tokens):
    """The smallest gap between the best and second-best logit over the generated positions."""
    ids = torch.tensor([prompt + new_tokens[:-1]])  # the last new token is never fed
    logits, _ = model(ids, targets=ids)  # (1, T, V): every position
    top2 = logits[0, len(prompt) - 1:].topk(2, dim=-1).values
    return (top2[:, 0] - top2[:, 1]).min().item()


def alone(model, tok, request):
    """What model.generate() gives for the request by itself (batch of one, its own cache)."""
    g = torch.Generator().manual_seed(request.seed)
    new = min(request.max_tokens, BLOCK - len(request.prompt) + 1)  # the block ends the sequence
    out = model.generate(torch.tensor([request.prompt]), new, request.temperature, request.top_k, request.top_p,
                         stop_tokens=(tok.eot_id,), generator=g)
    return out[0, len(request.prompt):].tolist()


def run(engine, seqs, max_steps=1000):
    for _ in range(max_steps):
        if all(s.finish_reason for s in seqs):
            return
        engine.step()
    raise AssertionError("the engine did not finish the requests")


def random_prompt(rng, tok, n):
    return [rng.randrange(tok.eot_id) for _ in range(n)]


# ---- the engine, stepped by hand ----

def test_greedy_equals_generate_alone_with_mixed_lengths_and_staggered_arrivals(tok):
    model = sharp_model(tok)
    engine = Engine(model, tok, slots=3)  # fewer slots than requests: slots are reused
    rng = random.Random(0)
    # (prompt length, max_tokens): short and long, one filling the block, one running into its end
    shapes = [(1, 20), (30, 5), (7, 34), (BLOCK, 3), (50, 30), (12, 12), (3, 40), (20, 1)]
    requests = [Request(random_prompt(rng, tok, n), m, temperature=0) for n, m in shapes]
    seqs = []
    for i, r in enumerate(requests):
        seqs.append(engine.submit(r))
        for _ in range(i % 3):  # arrive while the others are at different positions
            engine.step()
    run(engine, seqs)
    for r, seq in zip(requests, seqs):
        expected = alone(model, tok, r)
        assert min_margin(model, r.prompt, expected) > 1e-3  # far above fp32 rounding: the comparison is fair
        assert seq.tokens == expected
        assert seq.finish_reason == ("stop" if tok.eot_id in expected else "length")
        streamed = list(seq.stream())
        assert [t for t, _ in streamed] == seq.tokens and "".join(p for _, p in streamed) == seq.text
    assert len(seqs[3].tokens) == 1 and len(seqs[4].tokens) == BLOCK - 50 + 1 and len(seqs[7].tokens) == 1
    assert engine.free == {0, 1, 2} and not engine.running


def test_sampling_does_not_depend_on_batch_mates_or_earlier_requests(tok):
    model = sharp_model(tok)
    engine = Engine(model, tok, slots=4)
    rng = random.Random(1)
    r = Request(random_prompt(rng, tok, 9), 25, temperature=1.0, top_k=40, top_p=0.9, seed=7)
    first = engine.submit(r)
    run(engine, [first])
    # again, now among others that arrived earlier and later and used the slots before it
    others = [engine.submit(Request(random_prompt(rng, tok, n), 40, temperature=0.8, seed=n)) for n in (30, 5)]
    engine.step()
    again = engine.submit(r)
    others.append(engine.submit(Request(random_prompt(rng, tok, 3), 10, temperature=1.0, seed=3)))
    run(engine, [again, *others])
    assert again.tokens == first.tokens == alone(model, tok, r)


def test_stop_string_ends_the_text_before_it_and_is_never_streamed(tok):
    engine = Engine(sharp_model(tok), tok, slots=2)
    prompt = random_prompt(random.Random(2), tok, 5)
    full = engine.submit(Request(prompt, 40, temperature=0, ignore_eos=True))
    run(engine, [full])
    stop = full.text[len(full.text) // 2:len(full.text) // 2 + 2]
    cut = engine.submit(Request(prompt, 40, temperature=0, stop=("never there", stop), ignore_eos=True))
    run(engine, [cut])
    assert cut.finish_reason == "stop" and cut.text == full.text[:full.text.index(stop)]
    assert cut.tokens == full.tokens[:len(cut.tokens)] and len(cut.tokens) < len(full.tokens)
    pieces = [p for _, p in cut.stream()]
    assert "".join(pieces) == cut.text and not any(stop in p for p in pieces)


def test_max_tokens_and_eos(tok):
    model = sharp_model(tok)
    engine = Engine(model, tok)
    seq = engine.submit(Request([1, 2, 3], 4, temperature=0, ignore_eos=True))
    run(engine, [seq])
    assert len(seq.tokens) == 4 and seq.finish_reason == "length"
    # a model that always says <|endoftext|> stops at once, and the end token is not text
    with torch.no_grad():
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.fill_(1.0)  # every final state is all ones,
        model.lm_head.weight[tok.eot_id] = 10.0  # and <|endoftext|>'s logit is by far the largest
    seq = engine.submit(Request([1, 2, 3], 4, temperature=0))
    run(engine, [seq])
    assert seq.tokens == [tok.eot_id] and seq.text == "" and seq.finish_reason == "stop"


def test_cancel_frees_the_slot_at_the_next_step(tok):
    engine = Engine(sharp_model(tok), tok, slots=1)
    long = engine.submit(Request([1, 2], 50, temperature=0, ignore_eos=True))
    engine.step()
    nxt = engine.submit(Request([3], 5, temperature=0, ignore_eos=True))
    long.cancel()
    engine.step()
    assert long.finish_reason == "cancelled" and engine.running == [nxt] and nxt.slot == 0
    assert len(long.tokens) == 2  # the prefill's token and one decode step's


def test_full_queue_refuses_and_stop_ends_everything(tok):
    engine = Engine(sharp_model(tok), tok, slots=1, max_queue=2)
    seqs = [engine.submit(Request([1], 5)) for _ in range(2)]
    with pytest.raises(queue.Full):
        engine.submit(Request([1], 5))
    engine.step()
    engine.stop()
    assert [s.finish_reason for s in seqs] == ["cancelled", "cancelled"] and engine.free == {0}


@pytest.mark.parametrize("policy, late_start", [("continuous", 2), ("static", 6), ("one", 7)])
def test_policies_admit_when_they_should(tok, policy, late_start):
    """Two requests (2 and 6 tokens) arrive at step 0, a third (2 tokens) at step 1; the step at
    which the third gets its first token shows the policy."""
    engine = Engine(sharp_model(tok), tok, slots=4, policy=policy)
    first = [engine.submit(Request([1, 2], m, temperature=0, ignore_eos=True)) for m in (6, 2)]
    started, step, late = None, 0, None
    while started is None:
        engine.step()
        step += 1
        if step == 1:
            late = engine.submit(Request([5], 2, temperature=0, ignore_eos=True))
        elif late.tokens:
            started = step
        assert len(engine.running) <= (1 if policy == "one" else 4)
    assert started == late_start and (first[0].finish_reason is None) == (policy == "continuous")
    run(engine, [late, *first])


@pytest.mark.parametrize("change, message", [
    (dict(prompt=[]), "no tokens"), (dict(prompt=[1] * (BLOCK + 1)), "at most 64"),
    (dict(max_tokens=0), "max_tokens"), (dict(max_tokens=BLOCK + 1), "max_tokens"),
    (dict(temperature=-0.1), "temperature"), (dict(top_p=0.0), "top_p"), (dict(top_p=1.5), "top_p"),
    (dict(top_k=0), "top_k"), (dict(stop=("",)), "stop"),
])
def test_bad_requests_say_what_is_wrong(tok, change, message):
    engine = Engine(sharp_model(tok), tok)
    with pytest.raises(ValueError, match=message):
        engine.submit(Request(**(dict(prompt=[1], max_tokens=4) | change)))


def test_background_thread_serves_and_stops(tok):
    engine = Engine(sharp_model(tok), tok, slots=2).start()
    try:
        seqs = [engine.submit(Request([i + 1], 8, temperature=0, ignore_eos=True)) for i in range(5)]
        assert all(len(list(s.stream())) == 8 for s in seqs)
        assert engine.stats()["finished"] == {"length": 5} and engine.stats()["tokens"] == 40
    finally:
        engine.stop()
    assert not engine.thread.is_alive()

"""Serving: the batched engine gives what generate() gives alone; the HTTP layer, its errors,
disconnects."""

import http.client
import json
import os
import queue
import random
import socket
import threading
import time

import pytest
import torch
from test_model import tiny_gpt

import serve
from nanolevels import serving
from nanolevels.checkpoint import load_model
from nanolevels.lora import add_lora, save_adapter
from nanolevels.server import MAX_BODY, Server
from nanolevels.serving import Engine, Request
from nanolevels.tokenizer import Tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

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
    """What greedy model.generate() gives for the request by itself (a batch of one, its own
    cache)."""
    new = min(request.max_tokens, BLOCK - len(request.prompt) + 1)  # the block ends the sequence
    out = model.generate(torch.tensor([request.prompt]), new, temperature=0,
                         stop_tokens=(tok.eot_id,))
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
        # far above fp32 rounding: the comparison is fair
        assert min_margin(model, r.prompt, expected) > 1e-3
        assert seq.tokens == expected
        assert seq.finish_reason == ("stop" if tok.eot_id in expected else "length")
        streamed = list(seq.stream())
        assert [t for t, _, _ in streamed] == seq.tokens
        assert "".join(p for _, p, _ in streamed) == seq.text
    assert len(seqs[3].tokens) == 1 and len(seqs[4].tokens) == BLOCK - 50 + 1
    assert len(seqs[7].tokens) == 1
    assert engine.free == {0, 1, 2} and not engine.running


def test_a_changed_block_serves_what_its_own_generate_gives(tok):
    """One transformer: the engine runs the model's own modules, so a forker's change to a block
    (here its attention's share of the residual halved) is what the server runs too."""
    def halved(b):
        def forward(x, cache=None, layer=0, positions=None):
            x = x + 0.5 * b.attn(b.ln_1(x), cache, layer, positions)
            return x + b.mlp(b.ln_2(x))
        return forward

    model = sharp_model(tok)
    for block in model.transformer.h:
        block.forward = halved(block)
    engine = Engine(model, tok, slots=2)
    rng = random.Random(2)
    requests = [Request(random_prompt(rng, tok, n), m, temperature=0, ignore_eos=True)
                for n, m in ((5, 20), (17, 9))]
    seqs = [engine.submit(r) for r in requests]
    run(engine, seqs)
    for r, seq in zip(requests, seqs):
        out = model.generate(torch.tensor([r.prompt]), r.max_tokens, temperature=0)
        out = out[0, len(r.prompt):].tolist()
        assert min_margin(model, r.prompt, out) > 1e-3 and seq.tokens == out
    unchanged = sharp_model(tok).generate(torch.tensor([requests[0].prompt]), 20, temperature=0)
    assert unchanged[0, 5:].tolist() != seqs[0].tokens  # the change changed what the model says


def test_sampling_does_not_depend_on_batch_mates_or_earlier_requests(tok):
    model = sharp_model(tok)
    engine = Engine(model, tok, slots=4)
    rng = random.Random(1)
    r = Request(random_prompt(rng, tok, 9), 25, temperature=1.0, top_k=40, top_p=0.9, seed=7)
    first = engine.submit(r)
    run(engine, [first])
    # again, now among others (same settings or not) that arrived earlier and later and used the
    # slots before
    others = [engine.submit(Request(random_prompt(rng, tok, n), 40, temperature=t, top_k=40,
                                    top_p=0.9, seed=n))
              for n, t in ((30, 1.0), (5, 0.8))]
    engine.step()
    again = engine.submit(r)
    others.append(engine.submit(Request(random_prompt(rng, tok, 3), 10, temperature=1.0, seed=3)))
    run(engine, [again, *others])
    assert again.tokens == first.tokens and len(set(first.tokens)) > 3
    # another seed draws otherwise; top_k=1 leaves nothing to draw from but the greedy choice
    other_seed = engine.submit(Request(r.prompt, 25, temperature=1.0, top_k=40, top_p=0.9, seed=8))
    top1 = engine.submit(Request(r.prompt, 25, temperature=1.0, top_k=1, seed=8))
    run(engine, [other_seed, top1])
    assert other_seed.tokens != first.tokens and top1.tokens == alone(model, tok, r)


def test_stop_string_ends_the_text_before_it_and_is_never_streamed(tok):
    engine = Engine(sharp_model(tok), tok, slots=2)
    prompt = random_prompt(random.Random(2), tok, 5)
    full = engine.submit(Request(prompt, 40, temperature=0, ignore_eos=True))
    run(engine, [full])
    stop = full.text[len(full.text) // 2:len(full.text) // 2 + 2]
    cut = engine.submit(Request(prompt, 40, temperature=0, stop=("never there", stop),
                                ignore_eos=True))
    run(engine, [cut])
    assert cut.finish_reason == "stop" and cut.text == full.text[:full.text.index(stop)]
    assert cut.tokens == full.tokens[:len(cut.tokens)] and len(cut.tokens) < len(full.tokens)
    pieces = [p for _, p, _ in cut.stream()]
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
    (dict(max_tokens=-1), "max_tokens"), (dict(max_tokens=BLOCK + 1), "max_tokens"),
    (dict(logprobs=6), "logprobs"), (dict(temperature=float("nan")), "temperature"),
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
        seqs = [engine.submit(Request([i + 1], 8, temperature=0, ignore_eos=True))
                for i in range(5)]
        assert all(len(list(s.stream())) == 8 for s in seqs)
        assert engine.stats()["finished"] == {"length": 5} and engine.stats()["tokens"] == 40
    finally:
        engine.stop()
    assert not engine.thread.is_alive()


# ---- over HTTP, on 127.0.0.1 with an ephemeral port ----

@pytest.fixture(scope="module")
def adapter(tiny_run, tmp_path_factory):
    """A rag-qa adapter file for the tiny model (untrained: it reads as the base model does)."""
    model, _, _ = load_model(tiny_run["checkpoint"])
    add_lora(model, r=2)
    path = str(tmp_path_factory.mktemp("adapter") / "adapter.safetensors")
    save_adapter(path, model)
    return path


def serve_args(tiny_run, adapter, index_dir, *extra):
    return ["--checkpoint", tiny_run["checkpoint"], "--adapter", adapter,
            "--world", tiny_run["world"], "--index-dir", str(index_dir), "--port", "0",
            "--slots", "4", "--device", "cpu", "--quiet", *extra]


class Running:
    """A Server answering on a background thread, for a `with` block; shut down at its end."""

    def __init__(self, server):
        self.server = server
        self.host, self.port = server.server_address[:2]

    def __enter__(self):
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.close()
        self.thread.join(timeout=10)

    def call(self, method, path, data=None, headers=None):
        """(status, headers, body bytes) of one request."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        try:
            conn.request(method, path, body=data,
                         headers=headers or {"Content-Type": "application/json"})
            response = conn.getresponse()
            return response.status, response.headers, response.read()
        finally:
            conn.close()

    def request(self, method, path, body=None, raw=None):
        """(status, parsed JSON body) of one request; raw sends bytes as they are."""
        data = raw if raw is not None else None if body is None else json.dumps(body).encode()
        status, _, out = self.call(method, path, data)
        return status, json.loads(out)

    def stream(self, body, path="/v1/completions"):
        """The data: lines of a streamed completion (or chat), in order."""
        data = json.dumps({**body, "stream": True}).encode()
        status, headers, out = self.call("POST", path, data)
        assert status == 200 and headers["Content-Type"] == "text/event-stream", out
        return [line[len(b"data: "):].decode() for line in out.split(b"\n\n") if line]


@pytest.fixture(scope="module")
def server(tiny_run, adapter, tmp_path_factory):
    args = serve_args(tiny_run, adapter, tmp_path_factory.mktemp("rag"))
    with Running(serve.build(serve.parse_args(args))) as s:
        yield s


def test_streamed_completion_is_one_event_per_token_then_done(server):
    body = {"prompt": "Ada Jo", "max_tokens": 12, "temperature": 0, "ignore_eos": True}
    events = server.stream(body)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e)["choices"][0] for e in events[:-1]]
    assert len(chunks) == 12 + 1 and all(c["finish_reason"] is None for c in chunks[:-1])
    assert chunks[-1] == {"index": 0, "text": "", "logprobs": None, "finish_reason": "length"}
    status, whole = server.request("POST", "/v1/completions", body)
    assert status == 200 and whole["choices"][0]["text"] == "".join(c["text"] for c in chunks)
    assert whole["usage"]["completion_tokens"] == 12
    assert whole["choices"][0]["finish_reason"] == "length"


def test_completion_with_sampling_and_stop(server):
    body = {"prompt": "Ada Jo", "max_tokens": 20, "temperature": 0.9, "top_p": 0.9, "top_k": 50,
            "seed": 3,
            "stop": ["\n", "."], "model": "nanolevels"}
    (s1, a), (s2, b) = (server.request("POST", "/v1/completions", body) for _ in range(2))
    assert s1 == s2 == 200 and a["choices"] == b["choices"]  # the same seed, the same text
    assert "\n" not in a["choices"][0]["text"] and "." not in a["choices"][0]["text"]


def test_answer_retrieves_and_reads(server, tiny_run):
    person = json.loads(open(os.path.join(tiny_run["world"], "qa_new.jsonl")).readline())
    status, out = server.request("POST", "/v1/answer", {"question": person["question"]})
    assert status == 200 and isinstance(out["answer"], str) and "\n" not in out["answer"]
    assert 1 <= len(out["sources"]) <= 2 and out["sources"][0].startswith(person["person"] + "#")


def test_health_and_stats(server):
    assert server.request("GET", "/health") == (200, {"status": "ok"})
    status, stats = server.request("GET", "/stats")
    assert status == 200 and stats["slots"] == 4 and stats["running"] == 0 and stats["waiting"] == 0
    assert stats["tokens_per_s"] >= 0 and stats["answer"]["slots"] == 4


LONG = "Ada Jo Crane was born in Lyon. " * 40


@pytest.mark.parametrize("method, path, body, status, message", [
    ("POST", "/v1/completions", b"{not json", 400, "not valid JSON"),
    ("POST", "/v1/completions", b"[1, 2]", 400, "JSON object"),
    ("POST", "/v1/completions", {}, 400, "missing field: prompt"),
    ("POST", "/v1/completions", {"prompt": 5}, 400, "prompt must be a string"),
    ("POST", "/v1/completions", {"prompt": "a", "max_tokens": -1},
     400, "max_tokens must be between 0 and 64"),
    ("POST", "/v1/completions", {"prompt": "a", "max_tokens": 65},
     400, "max_tokens must be between 0 and 64"),
    ("POST", "/v1/completions", {"prompt": "a", "max_tokens": "5"},
     400, "max_tokens must be an integer"),
    ("POST", "/v1/completions", {"prompt": "a", "max_tokens": True},
     400, "max_tokens must be an integer"),
    ("POST", "/v1/completions", {"prompt": LONG}, 400, "reads at most 64"),
    ("POST", "/v1/completions", {"prompt": "a", "temperature": -1}, 400, "temperature"),
    ("POST", "/v1/completions", {"prompt": "a", "top_p": 0}, 400, "top_p must be in (0, 1]"),
    ("POST", "/v1/completions", {"prompt": "a", "top_p": 1.5}, 400, "top_p must be in (0, 1]"),
    ("POST", "/v1/completions", {"prompt": "a", "top_k": 0}, 400, "top_k"),
    ("POST", "/v1/completions", {"prompt": "a", "stop": [1]}, 400, "stop must be"),
    ("POST", "/v1/completions", {"prompt": "a", "stream": "yes"},
     400, "stream must be true or false"),
    ("POST", "/v1/completions", {"prompt": "a", "max_token": 5},
     400, "unknown field(s) ['max_token']"),
    ("POST", "/v1/completions", b"x" * (MAX_BODY + 1), 413, "over the limit"),
    ("POST", "/v1/answer", {"question": " "}, 400, "question is empty"),
    ("POST", "/v1/answer", {"question": 1}, 400, "question must be a string"),
    ("GET", "/nope", None, 404, "no such path /nope"),
    ("POST", "/v1/nope", {}, 404, "POST /v1/completions"),
    ("GET", "/v1/completions", None, 405, "takes POST"),
])
def test_bad_input_is_a_4xx_that_says_what_and_the_server_goes_on(server, method, path, body,
                                                                   status, message):
    sent = {"raw": body} if isinstance(body, bytes) else {"body": body}
    got, out = server.request(method, path, **sent)
    assert got == status and message in out["error"]["message"], out
    assert server.request("POST", "/v1/completions", {"prompt": "a", "max_tokens": 2})[0] == 200


def slow_decode(monkeypatch, seconds):
    """Make every decode step take at least `seconds`, so that a test can act while requests run."""
    decode = serving.Engine.decode

    def slow(engine):
        time.sleep(seconds)
        return decode(engine)

    monkeypatch.setattr(serving.Engine, "decode", slow)


def wait_for(condition, seconds=10):
    t0 = time.time()
    while not condition():
        assert time.time() - t0 < seconds, "timed out"
        time.sleep(0.01)


def test_full_queue_is_a_503_and_no_adapter_is_said(tiny_run, monkeypatch):
    slow_decode(monkeypatch, 0.05)
    model, tok, _ = load_model(tiny_run["checkpoint"])
    engine = Engine(model, tok, slots=1, max_queue=1)
    with Running(Server(engine, tok, no_reader="no adapter: python train_lora.py --task rag-qa",
                        log=lambda line: None)) as s:
        engine.submit(Request([1], 60, ignore_eos=True))  # runs for seconds in the one slot
        wait_for(lambda: engine.stats()["running"] == 1)
        engine.submit(Request([1], 5))  # waits: the queue is full
        status, out = s.request("POST", "/v1/completions", {"prompt": "a"})
        assert status == 503 and "busy" in out["error"]["message"]
        status, out = s.request("POST", "/v1/answer", {"question": "Who?"})
        assert status == 503 and "train_lora.py --task rag-qa" in out["error"]["message"]


def test_a_client_that_disconnects_frees_its_slot(server, monkeypatch):
    # 60 tokens take over a second: the disconnect must end it long before
    slow_decode(monkeypatch, 0.02)
    engine = server.server.engine
    cancelled = engine.stats()["finished"].get("cancelled", 0)
    body = json.dumps({"prompt": "Ada", "max_tokens": 60, "stream": True,
                       "ignore_eos": True}).encode()
    with socket.create_connection((server.host, server.port), timeout=10) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
                     % len(body) + body)
        received = b""
        while b"data: " not in received:
            received += sock.recv(4096)
    t0 = time.time()
    wait_for(lambda: engine.stats()["finished"].get("cancelled", 0) == cancelled + 1)
    assert time.time() - t0 < 1.0 and engine.stats()["running"] == 0


def test_serve_py_user_errors(tiny_run, adapter, tmp_path):
    args = serve_args(tiny_run, adapter, tmp_path)
    with pytest.raises(FileNotFoundError, match="train_pretrain.py"):
        serve.build(serve.parse_args([*args, "--checkpoint", str(tmp_path / "none.safetensors")]))
    with pytest.raises(FileNotFoundError, match="train_lora.py"):
        serve.build(serve.parse_args([*args, "--adapter", str(tmp_path / "none.safetensors")]))
    with pytest.raises(ValueError, match="--slots"):
        serve.parse_args(["--slots", "0"])
    with Running(serve.build(serve.parse_args(args))) as running:  # the port is taken
        with pytest.raises(OSError, match="choose another --port"):
            serve.build(serve.parse_args([*args, "--port", str(running.port)]))

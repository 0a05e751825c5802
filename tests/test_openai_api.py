"""The OpenAI dialect over HTTP: /v1/models, prompt lists, n, logprobs, echo, chat for the reader,
the requests the official client sends, and /metrics in Prometheus' text format (issue 25)."""
# ruff: noqa: F811 (the fixtures imported from test_serve are the tests' arguments)

import json
import math
import os
import re

import pytest
import torch
from conftest import FP32
from test_serve import ROOT, Running, adapter, serve_args, server  # noqa: F401

import serve
from nanolevels.openai_api import token_text

FP32_APPROX = {"abs": FP32["atol"], "rel": FP32["rtol"]}
BODY = {"prompt": "Ada Jo", "max_tokens": 6, "temperature": 0, "ignore_eos": True}


def completion(server, **changes):
    status, out = server.request("POST", "/v1/completions", BODY | changes)
    assert status == 200, out
    return out


def test_models_lists_the_model_and_its_adapter(server):
    status, out = server.request("GET", "/v1/models")
    assert status == 200 and out["object"] == "list"
    assert [(m["id"], m["object"], m.get("parent")) for m in out["data"]] == [
        ("nanolevels", "model", None), ("nanolevels-rag-qa", "model", "nanolevels")]
    assert all(m["max_model_len"] == 64 and isinstance(m["created"], int) for m in out["data"])


def test_the_adapter_continues_text_too_and_an_unknown_model_is_a_404(server):
    assert completion(server, model="nanolevels-rag-qa")["model"] == "nanolevels-rag-qa"
    status, out = server.request("POST", "/v1/completions", BODY | {"model": "gpt-4o"})
    assert status == 404 and out["error"]["code"] == "model_not_found"
    assert out["error"]["param"] == "model" and "nanolevels-rag-qa" in out["error"]["message"]


def test_a_list_of_prompts_gives_one_choice_each_in_order(server):
    prompts = ["Ada Jo", "Liesl Sage", "Mira"]
    out = completion(server, prompt=prompts)
    assert [c["index"] for c in out["choices"]] == [0, 1, 2]
    for p, choice in zip(prompts, out["choices"]):
        assert choice["text"] == completion(server, prompt=p)["choices"][0]["text"]
    alone = [completion(server, prompt=p)["usage"]["prompt_tokens"] for p in prompts]
    assert out["usage"] == {"prompt_tokens": sum(alone), "completion_tokens": 18,
                            "total_tokens": sum(alone) + 18}


def test_token_id_prompts_go_as_they_are(server):
    tok = server.server.tokenizer
    ids = tok.encode("Ada Jo")
    by_text, by_ids = completion(server), completion(server, prompt=[tok.eot_id, *ids])
    assert by_ids["choices"][0]["text"] == by_text["choices"][0]["text"]
    two = completion(server, prompt=[[tok.eot_id, *ids], ids])
    assert two["choices"][0]["text"] == by_text["choices"][0]["text"] and len(two["choices"]) == 2


def test_n_samples_several_choices_and_at_temperature_0_they_are_equal(server):
    sampled = {"temperature": 1.0, "seed": 5, "max_tokens": 12}
    out = completion(server, n=3, **sampled)
    texts = [c["text"] for c in out["choices"]]
    assert [c["index"] for c in out["choices"]] == [0, 1, 2] and len(set(texts)) > 1
    # choice j draws with seed + j: each is the n=1 answer of its seed
    assert texts == [completion(server, **{**sampled, "seed": 5 + j})["choices"][0]["text"]
                     for j in range(3)]
    greedy = completion(server, n=2)
    assert greedy["choices"][0]["text"] == greedy["choices"][1]["text"]
    assert greedy["usage"]["completion_tokens"] == 12
    both = completion(server, prompt=["Ada", "Mira"], n=2)  # prompt 0's two choices, then 1's
    assert [c["text"] for c in both["choices"]][::2] == [
        completion(server, prompt=p)["choices"][0]["text"] for p in ("Ada", "Mira")]


def model_logprobs(server, ids):
    """log-softmax of the served model's logits at every position of ids: (T, V)."""
    model = server.server.engine.model
    with torch.no_grad():
        logits, _ = model(torch.tensor([ids]), targets=torch.tensor([ids]))
    return torch.log_softmax(logits[0].float(), dim=-1)


def test_logprobs_are_the_models_in_the_completions_layout(server):
    tok, model = server.server.tokenizer, server.server.engine.model
    out = completion(server, logprobs=2, max_tokens=8)
    choice = out["choices"][0]
    lp = choice["logprobs"]
    assert set(lp) == {"tokens", "token_logprobs", "top_logprobs", "text_offset"}
    assert "".join(lp["tokens"]) == choice["text"]
    assert lp["text_offset"] == [len("".join(lp["tokens"][:i])) for i in range(8)]
    prompt = [tok.eot_id, *tok.encode("Ada Jo")]
    ids = model.generate(torch.tensor([prompt]), 8, temperature=0)[0].tolist()  # greedy, alone
    assert lp["tokens"] == [token_text(tok, t) for t in ids[len(prompt):]]
    reference = model_logprobs(server, ids)[len(prompt) - 1:-1]  # (8, V): the choosing positions
    for i, (chosen, top) in enumerate(zip(lp["token_logprobs"], lp["top_logprobs"])):
        assert chosen == pytest.approx(reference[i, ids[len(prompt) + i]].item(), **FP32_APPROX)
        best = reference[i].topk(2)
        assert len(top) <= 3 and lp["tokens"][i] in top  # the top 2, and the chosen token
        assert sorted(top.values(), reverse=True)[:2] == pytest.approx(best.values.tolist(),
                                                                       **FP32_APPROX)


def test_streamed_logprobs_add_up_to_the_whole(server):
    whole = completion(server, logprobs=1)["choices"][0]
    events = [json.loads(e) for e in server.stream(BODY | {"logprobs": 1})[:-1]]
    parts = [e["choices"][0]["logprobs"] for e in events if e["choices"][0]["logprobs"]]
    assert all(len(p["tokens"]) == 1 for p in parts)
    assert {k: [x for p in parts for x in p[k]] for k in whole["logprobs"]} == whole["logprobs"]


def test_echo_gives_the_prompt_first_and_scores_it_with_max_tokens_0(server):
    tok = server.server.tokenizer
    prompt = "Ada Jo Crane was born in"
    echoed = completion(server, prompt=prompt, echo=True)["choices"][0]
    assert echoed["text"] == prompt + completion(server, prompt=prompt)["choices"][0]["text"]
    scored = completion(server, prompt=prompt, echo=True, max_tokens=0, logprobs=0)
    choice, lp = scored["choices"][0], scored["choices"][0]["logprobs"]
    assert choice["text"] == prompt and "".join(lp["tokens"]) == prompt
    assert scored["usage"]["completion_tokens"] == 0 and choice["finish_reason"] == "length"
    ids = [tok.eot_id, *tok.encode(prompt)]  # each prompt token scored after the ones before it
    reference = model_logprobs(server, ids)[:-1].gather(1, torch.tensor(ids[1:])[:, None])[:, 0]
    assert torch.allclose(torch.tensor(lp["token_logprobs"]), reference, **FP32)
    # a token-id prompt has nothing before its first token: OpenAI's None there
    first = completion(server, prompt=ids[1:], echo=True, max_tokens=0, logprobs=0)
    assert first["choices"][0]["logprobs"]["token_logprobs"][0] is None


def test_stream_options_include_usage_sends_a_last_chunk_with_it(server):
    events = server.stream(BODY | {"stream_options": {"include_usage": True}})
    assert events[-1] == "[DONE]"
    last = json.loads(events[-2])
    assert last["choices"] == [] and last["usage"]["completion_tokens"] == 6
    assert json.loads(events[-3])["choices"][0]["finish_reason"] == "length"


def test_chat_asks_the_reader_the_last_user_message_with_its_sources(server, tiny_run):
    with open(os.path.join(tiny_run["world"], "qa_new.jsonl")) as f:
        person = json.loads(f.readline())
    messages = [{"role": "system", "content": "Answer briefly."},
                {"role": "user", "content": "Hello?"}, {"role": "assistant", "content": "Hi."},
                {"role": "user", "content": [{"type": "text", "text": person["question"]}]}]
    status, out = server.request("POST", "/v1/chat/completions", {"messages": messages})
    answer = server.request("POST", "/v1/answer", {"question": person["question"]})[1]
    assert status == 200 and out["object"] == "chat.completion" and out["model"] == (
        "nanolevels-rag-qa")
    message = out["choices"][0]["message"]
    assert message == {"role": "assistant", "content": answer["answer"]}
    assert out["sources"] == answer["sources"] and out["usage"]["completion_tokens"] >= 1
    events = [json.loads(e) for e in server.stream({"messages": messages},
                                                   "/v1/chat/completions")[:-1]]
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert events[0]["sources"] == answer["sources"]
    assert "".join(e["choices"][0]["delta"].get("content", "") for e in events) == (
        message["content"])
    assert events[-1]["choices"][0]["finish_reason"] == out["choices"][0]["finish_reason"]


@pytest.mark.parametrize("path, change, param", [
    ("/v1/completions", {"suffix": "x"}, "suffix"),
    ("/v1/completions", {"best_of": 2}, "best_of"),
    ("/v1/completions", {"logit_bias": {"1": 5}}, "logit_bias"),
    ("/v1/completions", {"presence_penalty": 0.5}, "presence_penalty"),
    ("/v1/completions", {"logprobs": 6}, "logprobs"),
    ("/v1/completions", {"n": 0}, "n"),
    ("/v1/completions", {"prompt": ["a"] * 9, "n": 2}, "n"),
    ("/v1/completions", {"stream_options": {"include_usage": True}}, "stream_options"),
    ("/v1/completions", {"user_id": "x"}, "user_id"),
    ("/v1/completions", {"prompt": "x" * 500}, "prompt"),
    ("/v1/chat/completions", {"tools": []}, "tools"),
    ("/v1/chat/completions", {"n": 2}, "n"),
    ("/v1/chat/completions", {"model": "nanolevels"}, "model"),
    ("/v1/chat/completions", {"max_tokens": 17}, "max_tokens"),
    ("/v1/chat/completions", {"messages": [{"role": "system", "content": "Hi"}]}, "messages"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "x"}}]}]}, "messages[0].content"),
])
def test_what_is_not_supported_is_a_400_naming_the_field(server, path, change, param):
    base = BODY if path == "/v1/completions" else {
        "messages": [{"role": "user", "content": "Who?"}]}
    status, out = server.request("POST", path, base | change)
    assert status == 400 and out["error"]["param"] == param, out
    assert out["error"]["type"] == "invalid_request_error"


def test_neutral_values_of_unsupported_fields_are_accepted(server):
    neutral = {"frequency_penalty": 0, "presence_penalty": 0, "best_of": 1, "logit_bias": {}}
    assert completion(server, **neutral)["choices"] == completion(server)["choices"]


with open(os.path.join(ROOT, "tests", "openai_requests.json")) as f:
    RECORDED = json.load(f)["requests"]  # what openai 3.60.0 sent, recorded by a stub server


@pytest.mark.parametrize("name", list(RECORDED))
def test_the_requests_the_official_client_sends_are_answered(server, name):
    r = RECORDED[name]
    data = None if r["body"] is None else json.dumps(r["body"]).encode()
    status, headers, out = server.call(r["method"], r["path"], data, r["headers"])
    assert status == 200, out
    if r["body"] and r["body"].get("stream"):
        assert headers["Content-Type"] == "text/event-stream"
        events = [line[6:] for line in out.decode().split("\n\n") if line]
        assert events[-1] == "[DONE]"
        chunks = [json.loads(e) for e in events[:-1]]
        kind = "chat.completion.chunk" if "messages" in r["body"] else "text_completion"
        assert all(c["object"] == kind and c["model"] == r["body"]["model"] for c in chunks)
        return
    body = json.loads(out)
    if name == "models.list":
        assert {"id", "object", "created", "owned_by"} <= set(body["data"][0])
    elif "messages" in r["body"]:
        assert body["choices"][0]["message"]["role"] == "assistant"
        assert isinstance(body["choices"][0]["message"]["content"], str)
    else:
        prompts = r["body"]["prompt"] if isinstance(r["body"]["prompt"], list) else [0]
        assert len(body["choices"]) == len(prompts) * r["body"].get("n", 1)
        assert {"id", "object", "created", "model", "choices", "usage"} <= set(body)
        assert all({"index", "text", "logprobs", "finish_reason"} <= set(c)
                   for c in body["choices"])


# ---- /metrics ----

SAMPLE = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_prometheus(text: str) -> dict:
    """{(sample name, frozenset of labels): value} of Prometheus' text format, checking its rules
    on the way: HELP and TYPE before a family's samples, known types, label syntax, a histogram's
    buckets cumulative up to le="+Inf", which equals its _count."""
    types, samples = {}, {}
    assert text.endswith("\n")
    for line in text.splitlines():
        if line.startswith("# HELP "):
            assert len(line.split(" ", 3)) == 4
        elif line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind in ("counter", "gauge", "histogram") and name not in types
            types[name] = kind
        else:
            m = SAMPLE.fullmatch(line)
            assert m, line
            name, labels, value = m.groups()
            family = re.sub(r"_(bucket|sum|count)$", "", name)
            assert types.get(name) in ("counter", "gauge") or types.get(family) == "histogram"
            pairs = LABEL.findall(labels or "")
            assert ",".join(f'{k}="{v}"' for k, v in pairs) == (labels or ""), line
            samples[name, frozenset(pairs)] = float(value)
    for name, kind in types.items():
        if kind == "histogram":
            check_histogram(name, samples)
    return samples


def check_histogram(name, samples):
    series = {}
    for (sample, labels), value in samples.items():
        if sample == name + "_bucket":
            le = dict(labels)["le"]
            series.setdefault(labels - {("le", le)}, []).append((float(le), value))
    for labels, buckets in series.items():
        counts = [v for _, v in sorted(buckets)]
        assert counts == sorted(counts) and max(buckets)[0] == math.inf
        assert counts[-1] == samples[name + "_count", labels]


def get(samples, name, **labels):
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_metrics_parse_and_count_what_was_sent(tiny_run, adapter, tmp_path):
    with Running(serve.build(serve.parse_args(serve_args(tiny_run, adapter, tmp_path)))) as s:
        use, sequences = [], 0
        for body, n in [(BODY, 1), (BODY | {"max_tokens": 3, "prompt": "Mira"}, 1),
                        (BODY | {"n": 2, "temperature": 0.9}, 2),
                        (BODY | {"prompt": ["a", "b"]}, 2),
                        (BODY | {"echo": True, "max_tokens": 0, "logprobs": 0}, 1)]:
            status, out = s.request("POST", "/v1/completions", body)
            assert status == 200
            # each choice is prefilled: the engine counts a prompt once per choice
            use.append((out["usage"]["prompt_tokens"] * (n if "n" in body else 1),
                        out["usage"]["completion_tokens"], len(out["choices"])))
            sequences += n
        events = s.stream(BODY | {"stream_options": {"include_usage": True}})
        usage = json.loads(events[-2])["usage"]
        use.append((usage["prompt_tokens"], usage["completion_tokens"], 1))
        sequences += 1
        for bad in ({"prompt": None}, {"prompt": "a", "top_p": 2}):
            assert s.request("POST", "/v1/completions", bad)[0] == 400
        chat = s.request("POST", "/v1/chat/completions",
                         {"messages": [{"role": "user", "content": "Who?"}]})[1]
        status, headers, raw = s.call("GET", "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
    m = parse_prometheus(raw.decode())
    base, reader = {"model_name": "nanolevels"}, {"model_name": "nanolevels-rag-qa"}
    generated = sum(g for _, g, _ in use)
    started = sequences - 1  # the echo with max_tokens 0 never had a first token
    assert get(m, "vllm:prompt_tokens_total", **base) == sum(p for p, _, _ in use)
    assert get(m, "vllm:generation_tokens_total", **base) == generated
    assert get(m, "vllm:request_success_total", **base, finished_reason="length") == sequences
    assert get(m, "vllm:time_to_first_token_seconds_count", **base) == started
    assert get(m, "vllm:time_per_output_token_seconds_count", **base) == generated - started
    assert get(m, "vllm:e2e_request_latency_seconds_count", **base) == sequences
    assert get(m, "vllm:num_requests_running", **base) == 0
    assert get(m, "vllm:num_requests_waiting", **base) == 0
    assert get(m, "vllm:kv_cache_usage_perc", **base) == 0
    assert get(m, "vllm:prompt_tokens_total", **reader) == chat["usage"]["prompt_tokens"]
    assert get(m, "vllm:generation_tokens_total", **reader) == chat["usage"]["completion_tokens"]
    http = {"method": "POST", "handler": "/v1/completions"}
    assert get(m, "http_requests_total", **http, status="200") == 6
    assert get(m, "http_requests_total", **http, status="400") == 2
    assert get(m, "http_requests_total", method="POST", handler="/v1/chat/completions",
               status="200") == 1


def test_the_metrics_parser_refuses_what_is_not_the_format():
    good = "# HELP x_total X.\n# TYPE x_total counter\nx_total{a=\"1\"} 3\n"
    assert parse_prometheus(good) == {("x_total", frozenset({("a", "1")})): 3.0}
    for bad in ("x_total 3\n", good.replace('{a="1"}', "{a=1}"), good.rstrip("\n"),
                good.replace("counter", "countr"),
                ("# HELP h H.\n# TYPE h histogram\nh_bucket{le=\"1.0\"} 2\n"
                 "h_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n")):
        with pytest.raises(AssertionError):
            parse_prometheus(bad)

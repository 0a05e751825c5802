"""Benchmark serving: one request at a time vs static vs continuous batching, streamed over HTTP.

    python bench/bench_serve.py              # about a minute on 2 CPU cores
    python bench/bench_serve.py --quick      # half the requests
    python bench/bench_serve.py --checkpoint out/pretrain/model.safetensors   # a trained model

For each policy a server runs in this process on 127.0.0.1 (an ephemeral port), and 1, 8 and 32
clients (threads) each send their share of the requests one after another, as streamed completions.
Every policy gets the same seeded requests: a prompt of 8-96 tokens cut from a biography, 16-160
new tokens with <|endoftext|> ignored (so the output lengths are the same whatever the weights),
half greedy, half sampled. The model has the default shape with random weights unless --checkpoint.
tokens/s = all new tokens / wall time; latency = request sent -> [DONE]; TTFT = request sent -> the
first token's event. Absolute figures move with the machine's load; compare policies within a run.
Last, each server's /metrics is read and its counters are printed beside what the clients counted
(each stream's usage chunk).
"""

import argparse
import http.client
import json
import multiprocessing
import os
import random
import re
import sys
import threading
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from nanolevels import checkpoint  # noqa: E402
from nanolevels.model import GPT, GPTConfig  # noqa: E402
from nanolevels.server import Server  # noqa: E402
from nanolevels.serving import POLICIES, Engine  # noqa: E402
from nanolevels.tokenizer import Tokenizer  # noqa: E402
from nanolevels.world import biography, make_world  # noqa: E402

CLIENTS = (1, 8, 32)
REQUESTS = {1: 8, 8: 48, 32: 128}  # per number of clients; --quick halves them
SLOTS = 16
TIME_LIMIT_S = 120  # per policy and client count: clients send nothing new after it


def biographies() -> list[str]:
    rng = random.Random(0)
    return [biography(p, rng) for p in make_world(300, seed=1337).people for _ in range(3)]


def default_model(texts: list[str]):
    """(a GPT of train_pretrain.py's default shape with random weights, a BPE tokenizer trained
    on texts)."""
    tokenizer = Tokenizer.train("\n".join(texts), 1746)
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=tokenizer.vocab_size, block_size=256, n_layer=4, n_head=4,
                       n_embd=128)
    return GPT(config).eval(), tokenizer


def make_requests(tokenizer, texts, n: int, seed: int = 0) -> list[dict]:
    """n completion bodies of seeded, varied shapes (a prompt cut from a biography at a token
    count)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        ids = tokenizer.encode(" ".join(rng.sample(texts, 2)))[:rng.randint(8, 96)]
        out.append({"prompt": tokenizer.decode(ids), "max_tokens": rng.randint(16, 160),
                    "stream": True, "stream_options": {"include_usage": True},
                    "ignore_eos": True, "temperature": rng.choice((0.0, 0.8)), "seed": i})
    return out


def one_request(port: int, body: dict) -> tuple:
    """(seconds to the first token's event, seconds to [DONE], tokens, its usage) of one streamed
    completion."""
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("POST", "/v1/completions", body=json.dumps(body).encode())
    response = conn.getresponse()
    if response.status != 200:
        raise RuntimeError(f"HTTP {response.status}: {response.read()[:200]!r}")
    first, events, tail = None, 0, b""
    # read what has arrived and count the events, without parsing them: the clients, on the same
    # machine as the server, should take as little of its CPU as they can
    while data := response.read1(65536):
        first = first or time.perf_counter()
        events += data.count(b"data: ")
        tail = (tail + data)[-4096:]
    conn.close()
    usage = json.loads(tail.split(b"data: ")[-2])["usage"]  # the chunk before [DONE]
    # one event per token, then the finish reason's, the usage's and [DONE]
    return first - t0, time.perf_counter() - t0, events - 3, usage


def load_test(port: int, requests: list[dict], clients: int) -> dict:
    """Each client sends requests[i::clients] in turn; the figures of the whole run."""
    results, deadline = [], time.perf_counter() + TIME_LIMIT_S

    def client(mine):
        for body in mine:
            if time.perf_counter() > deadline:
                return
            results.append(one_request(port, body))  # list.append is atomic

    threads = [threading.Thread(target=client, args=(requests[i::clients],))
               for i in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    usage = [u for *_, u in results]
    ttft, latency, tokens = (np.array(x) for x in list(zip(*results))[:3])
    return {"requests": len(results), "tokens": int(tokens.sum()),
            "tokens_per_s": float(tokens.sum() / wall),
            "p50_latency_s": float(np.percentile(latency, 50)),
            "p95_latency_s": float(np.percentile(latency, 95)),
            "p50_ttft_s": float(np.percentile(ttft, 50)),
            "p95_ttft_s": float(np.percentile(ttft, 95)),
            "prompt_tokens": sum(u["prompt_tokens"] for u in usage),
            "completion_tokens": sum(u["completion_tokens"] for u in usage)}


def metric(port: int, name: str) -> float:
    """One sample of the base model's engine from the server's /metrics."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    line = re.search(rf'^{name}{{model_name="nanolevels"}} (\S+)$', text, re.MULTILINE)
    return float(line.group(1))


def run(quick: bool = False, checkpoint_path: str | None = None, threads: int = 1) -> dict:
    """Every policy at every client count; torch runs on `threads` threads meanwhile."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return measure(quick, checkpoint_path)
    finally:
        torch.set_num_threads(previous)


def measure(quick: bool, checkpoint_path: str | None) -> dict:
    texts = biographies()
    if checkpoint_path:
        model, tokenizer, _ = checkpoint.load_model(checkpoint_path)
    else:
        model, tokenizer = default_model(texts)
    cfg = model.config
    weights = f"weights of {checkpoint_path}" if checkpoint_path else "random weights"
    r = {"model": f"{cfg.n_layer} layers x {cfg.n_embd} wide, block {cfg.block_size}, "
                  f"vocab {cfg.vocab_size}, {model.num_params():,} params, {weights}",
         "threads": torch.get_num_threads(), "slots": SLOTS, "runs": {}, "metrics": {}}
    servers = {}
    for policy in POLICIES[::-1]:  # one, static, continuous: all at once, over the same model
        engine = Engine(model, tokenizer, SLOTS, policy, max_queue=max(CLIENTS))
        servers[policy] = Server(engine, tokenizer, "127.0.0.1", 0, log=lambda line: None)
        threading.Thread(target=servers[policy].serve_forever, daemon=True).start()
    try:
        # the clients run in a process of their own, as they would on other machines: in this one
        # they would compete with the server's threads for Python's global interpreter lock
        with multiprocessing.get_context("spawn").Pool(1) as clients_process:
            sent = {}  # policy -> [prompt tokens, completion tokens, requests] the clients counted
            for policy, server in servers.items():
                *_, usage = one_request(server.server_address[1], {
                    "prompt": "warm up", "max_tokens": 4, "stream": True,
                    "stream_options": {"include_usage": True}})
                sent[policy] = [usage["prompt_tokens"], usage["completion_tokens"], 1]
            for clients in CLIENTS:  # the policies in turn, so that they see the same machine
                requests = make_requests(tokenizer, texts, REQUESTS[clients] // (2 if quick else 1))
                for policy, server in servers.items():
                    x = r["runs"][policy, clients] = clients_process.apply(
                        load_test, (server.server_address[1], requests, clients))
                    sent[policy] = [a + b for a, b in zip(sent[policy], (
                        x["prompt_tokens"], x["completion_tokens"], x["requests"]))]
        for policy, server in servers.items():
            port = server.server_address[1]
            r["metrics"][policy] = (sent[policy], [metric(port, name) for name in (
                "vllm:prompt_tokens_total", "vllm:generation_tokens_total",
                "vllm:e2e_request_latency_seconds_count")])
    finally:
        for server in servers.values():
            server.shutdown()
            server.close()
    r["cache_mb"] = servers["continuous"].engine.cache.nbytes / 2**20
    return r


def report(r: dict) -> None:
    print(f"model: {r['model']}; {r['slots']} slots, KV cache {r['cache_mb']:.1f} MB; "
          f"torch threads {r['threads']}")
    print(f"{'policy':<11} {'clients':>7} {'requests':>8} {'tokens':>7} {'tok/s':>7} "
          f"{'p50 latency':>11} {'p95 latency':>11} {'p50 TTFT':>9} {'p95 TTFT':>9}")
    for (policy, clients), x in r["runs"].items():
        print(f"{policy:<11} {clients:>7} {x['requests']:>8} {x['tokens']:>7} "
              f"{x['tokens_per_s']:>7.0f} {x['p50_latency_s']:>10.2f}s "
              f"{x['p95_latency_s']:>10.2f}s {x['p50_ttft_s']:>8.3f}s {x['p95_ttft_s']:>8.3f}s")
    c = max(CLIENTS)
    one, static, continuous = (r["runs"][policy, c] for policy in ("one", "static", "continuous"))
    print(f"at {c} clients: continuous batching gives "
          f"{continuous['tokens_per_s'] / one['tokens_per_s']:.1f}x the tokens/s of one at a time "
          f"({continuous['tokens_per_s'] / static['tokens_per_s']:.1f}x static's); p95 latency "
          f"{continuous['p95_latency_s']:.2f}s vs static {static['p95_latency_s']:.2f}s")
    print("/metrics against what the clients counted (usage chunks; the warm-up request included):")
    print(f"{'policy':<11} {'prompt tokens':>13} {'vllm:prompt_tokens_total':>24} "
          f"{'generated':>9} {'vllm:generation_tokens_total':>28} {'requests':>8} "
          f"{'e2e_request_latency_count':>25}")
    for policy, ((prompt, generated, requests), (m_prompt, m_generated, m_requests)) in (
            r["metrics"].items()):
        print(f"{policy:<11} {prompt:>13} {m_prompt:>24.0f} {generated:>9} {m_generated:>28.0f} "
              f"{requests:>8} {m_requests:>25.0f}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="half the requests")
    p.add_argument("--checkpoint", default=None,
                   help="a trained model instead of random weights of the default shape")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads of the engine (default: 1; on 2 cores the other one serves "
                        "HTTP and runs the clients)")
    args = p.parse_args()
    report(run(args.quick, args.checkpoint, args.threads))

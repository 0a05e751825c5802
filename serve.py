"""Serving: the model for many users at once over HTTP, with continuous batching.

    python serve.py                    # http://127.0.0.1:8000; Ctrl-C (or SIGTERM) drains and stops
    curl -N localhost:8000/v1/completions \
        -d '{"prompt": "Liesl Sage Keswick was born in", "stream": true}'
    curl localhost:8000/v1/answer -d '{"question": "What is the birth city of Liesl Sage Keswick?"}'
    curl localhost:8000/v1/models; curl localhost:8000/metrics; curl localhost:8000/stats

/v1/completions continues a text with the pretrained model, in OpenAI's dialect (prompt or a list
of them, max_tokens, temperature, top_p, top_k, stop, stream, seed, n, logprobs, echo), so the
official openai client works: OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="none").
/v1/answer is levels 2 and 3 together: TF-IDF retrieval over the world's documents, read by the
rag-qa adapter, with the source document ids; /v1/chat/completions asks it the last user message.
The engine is nanolevels/serving.py, the HTTP layer nanolevels/server.py (the dialect in
nanolevels/openai_api.py).
"""

import argparse
import os
import signal
import sys
import threading
import time

from nanolevels import cli, data
from nanolevels.device import pick_device
from nanolevels.lora import load_adapted, merge_lora
from nanolevels.retrieval import load_or_build_index
from nanolevels.server import DRAIN_S, HANDLERS, Reader, Server
from nanolevels.serving import POLICIES, Engine


def parse_args(argv):
    p = cli.ArgumentParser(description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=cli.MODEL, help=f"the model (default: {cli.MODEL})")
    p.add_argument("--adapter", default=None,
                   help="the rag-qa LoRA adapter that reads for /v1/answer and chat (default: "
                        f"{cli.READER}, if it exists)")
    p.add_argument("--world", default=cli.WORLD_DIR,
                   help="the prepared world whose documents /v1/answer searches (default: "
                        "data/world)")
    p.add_argument("--index-dir", default=cli.RAG_OUT,
                   help=f"where the retrieval index is cached (default: {cli.RAG_OUT})")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on; 0.0.0.0 opens it to the network "
                        "(default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000,
                   help="port; 0 picks a free one (default: 8000)")
    p.add_argument("--slots", type=int, default=16,
                   help="sequences decoded together in one forward pass (default: 16)")
    p.add_argument("--max-queue", type=int, default=64,
                   help="requests that may wait for a slot; more get a 503 (default: 64)")
    p.add_argument("--policy", default="continuous", choices=POLICIES,
                   help="continuous: fill free slots at every step; static: a new batch when the "
                        "last is done; one: one request at a time (default: continuous)")
    p.add_argument("--handlers", type=int, default=HANDLERS,
                   help="connections answered at once (threads); as many more wait, the rest get "
                        f"a 503 (default: {HANDLERS})")
    p.add_argument("--drain-seconds", type=float, default=DRAIN_S,
                   help="on Ctrl-C or SIGTERM, how long open requests may finish before their "
                        f"streams are ended (default: {DRAIN_S:g})")
    p.add_argument("--quiet", action="store_true", help="no line per HTTP request")
    cli.add_device_flags(p, dtype=False)  # --device --threads
    args = p.parse_args(argv)
    if min(args.slots, args.max_queue, args.handlers) < 1:
        raise ValueError(f"--slots, --max-queue and --handlers must be at least 1, got "
                         f"{args.slots}, {args.max_queue} and {args.handlers}")
    if not 0 <= args.port < 65536:
        raise ValueError(f"--port must be in 0..65535, got {args.port}")
    if not 0 <= args.drain_seconds <= 3600:  # NaN fails this too
        raise ValueError(f"--drain-seconds must be in 0..3600, got {args.drain_seconds}")
    return args


def make_reader(args, device):
    """(Reader for /v1/answer, None) or (None, the reason there is none)."""
    adapter = args.adapter or (cli.READER if os.path.exists(cli.READER) else None)
    if adapter is None:
        return None, (f"/v1/answer needs the rag-qa adapter and there is none at {cli.READER}: "
                      "make it with python train_lora.py --task rag-qa, or start serve.py with "
                      "--adapter PATH")
    model, tokenizer = load_adapted(args.checkpoint, adapter, device)
    docs_path = os.path.join(args.world, "docs.jsonl")
    if not os.path.exists(docs_path):
        return None, (f"/v1/answer needs documents and there are none at {docs_path}: run "
                      "python data/world/prepare.py")
    merge_lora(model)  # the adapter folded into the weights: reading costs what the base costs
    index, embedder = load_or_build_index(args.index_dir, data.load_documents(args.world),
                                          "tfidf")
    engine = Engine(model, tokenizer, args.slots, args.policy, args.max_queue)
    return Reader(engine, tokenizer, index, embedder), None


def build(args) -> Server:
    """The server for parsed arguments: the model's engine, and the reader's if there is an
    adapter."""
    device = pick_device(args.device)
    model, tokenizer = load_adapted(args.checkpoint, None, device)
    engine = Engine(model, tokenizer, args.slots, args.policy, args.max_queue)
    reader, no_reader = make_reader(args, device)
    log = (lambda line: None) if args.quiet else (lambda line: print(line, file=sys.stderr))
    try:
        return Server(engine, tokenizer, args.host, args.port, reader, no_reader, log,
                      args.handlers)
    except OSError as e:
        raise OSError(f"cannot listen on {args.host}:{args.port} ({e.strerror}); choose another "
                      "--port") from None


def main(argv=None):
    args = parse_args(argv)
    server = build(args)
    print(f"serving on {server.url} ({args.slots} slots, {args.policy} batching, "
          f"{server.engine.cache.nbytes / 2**20:.1f} MB of KV cache per engine); "
          f"/v1/answer: {'ready' if server.reader else server.no_reader}", flush=True)
    stop = threading.Event()

    def on_signal(signum, frame):  # the first: drain; a second: end the open requests now
        (server.hurry if stop.is_set() else stop).set()

    # a process manager stops a service with SIGTERM; a terminal with SIGINT: both drain
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    threading.Thread(target=server.serve_forever, name="accept", daemon=True).start()
    stop.wait()
    print(f"draining: no new connections; open requests get {args.drain_seconds:g} s to finish "
          "(a second Ctrl-C ends them now)", file=sys.stderr, flush=True)
    t0 = time.monotonic()
    server.drain(args.drain_seconds)
    finished = {name: engine.stats()["finished"] for name, engine in server.models.items()}
    print(f"stopped after draining for {time.monotonic() - t0:.1f} s; requests finished: "
          f"{finished}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(cli.run(main))

"""Serving: the model for many users at once over HTTP, with continuous batching.

    python serve.py                                   # http://127.0.0.1:8000; Ctrl-C stops it
    curl -N localhost:8000/v1/completions -d '{"prompt": "Liesl Sage Keswick was born in", "stream": true}'
    curl localhost:8000/v1/answer -d '{"question": "What is the birth city of Liesl Sage Keswick?"}'
    curl localhost:8000/stats

/v1/completions continues a text with the pretrained model (OpenAI-style fields: prompt, max_tokens,
temperature, top_p, top_k, stop, stream, seed). /v1/answer is levels 2 and 3 together: TF-IDF
retrieval over the world's documents, read by the rag-qa adapter, with the source document ids.
The engine is nanolevels/serving.py, the HTTP layer nanolevels/server.py.
"""

import argparse
import os
import sys

from nanolevels import cli, data
from nanolevels.device import pick_device
from nanolevels.lora import load_adapted, merge_lora
from nanolevels.retrieval import load_or_build_index
from nanolevels.server import Reader, Server
from nanolevels.serving import POLICIES, Engine


def parse_args(argv):
    p = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=cli.MODEL, help=f"the model (default: {cli.MODEL})")
    p.add_argument("--adapter", default=None,
                   help=f"the rag-qa LoRA adapter that reads for /v1/answer (default: {cli.READER}, if it exists)")
    p.add_argument("--world", default=cli.WORLD_DIR,
                   help="the prepared world whose documents /v1/answer searches (default: "
                        "data/world)")
    p.add_argument("--index-dir", default=cli.RAG_OUT,
                   help=f"where the retrieval index is cached (default: {cli.RAG_OUT})")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on; 0.0.0.0 opens it to the network (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000,
                   help="port; 0 picks a free one (default: 8000)")
    p.add_argument("--slots", type=int, default=16,
                   help="sequences decoded together in one forward pass (default: 16)")
    p.add_argument("--max-queue", type=int, default=64,
                   help="requests that may wait for a slot; more get a 503 (default: 64)")
    p.add_argument("--policy", default="continuous", choices=POLICIES,
                   help="continuous: fill free slots at every step; static: a new batch when the "
                        "last is done; one: one request at a time (default: continuous)")
    p.add_argument("--quiet", action="store_true", help="no line per HTTP request")
    cli.add_device_flags(p, dtype=False)  # --device --threads
    args = p.parse_args(argv)
    if args.slots < 1 or args.max_queue < 1:
        raise ValueError(f"--slots and --max-queue must be at least 1, got {args.slots} and {args.max_queue}")
    if not 0 <= args.port < 65536:
        raise ValueError(f"--port must be in 0..65535, got {args.port}")
    return args


def make_reader(args, device):
    """(Reader for /v1/answer, None) or (None, the reason there is none)."""
    adapter = args.adapter or (cli.READER if os.path.exists(cli.READER) else None)
    if adapter is None:
        return None, (f"/v1/answer needs the rag-qa adapter and there is none at {cli.READER}: make it with "
                      "python train_lora.py --task rag-qa, or start serve.py with --adapter PATH")
    model, tokenizer = load_adapted(args.checkpoint, adapter, device)
    docs_path = os.path.join(args.world, "docs.jsonl")
    if not os.path.exists(docs_path):
        return None, f"/v1/answer needs documents and there are none at {docs_path}: run python data/world/prepare.py"
    merge_lora(model)  # the adapter folded into the weights: reading costs what the base model costs
    index, embedder = load_or_build_index(args.index_dir, data.load_documents(args.world), "tfidf")
    engine = Engine(model, tokenizer, args.slots, args.policy, args.max_queue)
    return Reader(engine, tokenizer, index, embedder), None


def build(args) -> Server:
    """The server for parsed arguments: the model's engine, and the reader's if there is an adapter.
    """
    device = pick_device(args.device)
    model, tokenizer = load_adapted(args.checkpoint, None, device)
    engine = Engine(model, tokenizer, args.slots, args.policy, args.max_queue)
    reader, no_reader = make_reader(args, device)
    log = (lambda line: None) if args.quiet else (lambda line: print(line, file=sys.stderr))
    try:
        return Server(engine, tokenizer, args.host, args.port, reader, no_reader, log)
    except OSError as e:
        raise OSError(f"cannot listen on {args.host}:{args.port} ({e.strerror}); choose another --port") from None


def main(argv=None):
    args = parse_args(argv)
    server = build(args)
    print(f"serving on {server.url} ({args.slots} slots, {args.policy} batching, "
          f"{server.engine.cache.nbytes / 2**20:.1f} MB of KV cache per engine); "
          f"/v1/answer: {'ready' if server.reader else server.no_reader}", flush=True)
    try:
        server.serve_forever()
    finally:  # Ctrl-C: stop taking connections, end the running requests, join the engine threads
        server.close()


if __name__ == "__main__":
    sys.exit(cli.run(main))

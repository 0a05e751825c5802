"""The HTTP layer of serve.py: OpenAI-style completions and RAG answers in front of the engine.

POST /v1/completions takes a subset of OpenAI's fields ("model" is accepted and ignored) and may
stream server-sent events; POST /v1/answer {"question"} retrieves the biographies and reads the
answer with the rag-qa adapter; GET /health, /stats. The standard library's ThreadingHTTPServer
gives each connection a thread, which waits on its request's tokens while the engine computes.
References: OpenAI's completions API; karpathy/nanochat's chat_web.py.
"""

import json
import queue
import secrets
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from nanolevels.prompting import ANSWER_TOKENS, context_budget, prompt_ids, rag_prompt
from nanolevels.serving import Request

MAX_BODY = 64 * 1024  # bytes; a prompt fills the block long before this
COMPLETION_FIELDS = ("prompt", "max_tokens", "temperature", "top_p", "top_k", "stop", "stream",
                     "seed", "ignore_eos", "model")
ROUTES = {"/v1/completions": "POST", "/v1/answer": "POST", "/health": "GET", "/stats": "GET"}


class HTTPError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def field(body: dict, name: str, kind: type, default=None):
    """body[name], or default when absent or null; a 400 when it has another JSON type than kind."""
    value = body.get(name)
    if value is None:
        return default
    # an integer is a number too; but true is no number in JSON, though bool is an int in Python
    if isinstance(value, bool):
        ok = kind is bool
    else:
        ok = isinstance(value, (int, float) if kind is float else kind)
    if not ok:
        names = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}
        raise HTTPError(400, f"{name} must be {names[kind]}, got {json.dumps(value)}")
    return value


def completion_request(body: dict, tokenizer) -> Request:
    """The engine's Request for a /v1/completions body; a 400 that names the field for a bad one."""
    unknown = sorted(set(body) - set(COMPLETION_FIELDS))
    if unknown:
        raise HTTPError(400, f"unknown field(s) {unknown}; "
                             f"this server takes {', '.join(COMPLETION_FIELDS)}")
    if "prompt" not in body:
        raise HTTPError(400, "missing field: prompt (the text to continue)")
    stop = body.get("stop")
    stop = [stop] if isinstance(stop, str) else stop
    if stop is not None and not (isinstance(stop, list) and all(isinstance(s, str) for s in stop)):
        raise HTTPError(400, "stop must be a string or a list of strings, "
                             f"got {json.dumps(body['stop'])}")
    return Request(
        prompt=prompt_ids(tokenizer, field(body, "prompt", str)),
        max_tokens=field(body, "max_tokens", int, 16),
        temperature=field(body, "temperature", float, 1.0),
        top_k=field(body, "top_k", int),
        top_p=field(body, "top_p", float),
        stop=tuple(stop or ()),
        ignore_eos=field(body, "ignore_eos", bool, False),
        seed=field(body, "seed", int, secrets.randbits(63)),  # no seed: a fresh draw every time
    )


class Reader:
    """/v1/answer: retrieve the k best documents for a question, read the answer greedily."""

    def __init__(self, engine, tokenizer, index, embedder, k: int = 2):
        self.engine, self.tokenizer, self.index, self.embedder, self.k = (
            engine, tokenizer, index, embedder, k)

    def submit(self, question: str):
        """(the answer's Sequence in the engine, ids of the documents in the prompt, best first)."""
        hits = self.index.search(self.embedder.embed([question]), self.k)[0]
        budget = context_budget(self.engine.model)
        prompt, dropped = rag_prompt(question, [doc["text"] for _, doc in hits], self.tokenizer,
                                     budget)
        # a document too long for the block keeps its end, nearest the question, as generate() would
        ids = prompt_ids(self.tokenizer, prompt)[-budget:]
        seq = self.engine.submit(Request(ids, ANSWER_TOKENS, temperature=0, stop=("\n",)))
        return seq, [doc["id"] for _, doc in hits[:len(hits) - dropped]]


class Handler(BaseHTTPRequestHandler):
    """One HTTP request; self.server is the Server below, which holds the engine."""

    server_version = "nanolevels-serve"
    timeout = 30  # seconds a client may stay silent while sending its request (a socket timeout)

    def do_GET(self):
        self.route("GET")

    def do_POST(self):
        self.route("POST")

    def route(self, method: str):
        try:
            path = self.path.split("?", 1)[0]
            if path not in ROUTES:
                raise HTTPError(404, f"no such path {path}; this server has " +
                                ", ".join(f"{m} {p}" for p, m in ROUTES.items()))
            if ROUTES[path] != method:
                raise HTTPError(405, f"{path} takes {ROUTES[path]}, not {method}")
            if path == "/health":
                self.send_json(200, {"status": "ok"})
            elif path == "/stats":
                self.send_json(200, self.server.stats())
            elif path == "/v1/completions":
                self.completions(self.read_json())
            else:
                self.answer(self.read_json())
        except HTTPError as e:  # a bad input gets a 4xx with {"error": ...}; the server goes on
            self.send_json(e.status, {"error": str(e)})
        except ValueError as e:  # the engine's check of a request
            self.send_json(400, {"error": str(e)})
        except queue.Full:
            self.send_json(503, {"error": "server busy: the queue of waiting requests is full; "
                                          "retry in a moment"}, {"Retry-After": "1"})

    def read_json(self) -> dict:
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            raise HTTPError(411, "send the body with a Content-Length header")
        if int(length) > MAX_BODY:
            if int(length) <= 16 * MAX_BODY:
                self.rfile.read(int(length))  # read it: the client gets this answer, not a reset
            raise HTTPError(413, f"body of {length} bytes is over the limit of {MAX_BODY}")
        try:
            body = json.loads(self.rfile.read(int(length)))
        except ValueError as e:
            raise HTTPError(400, f"body is not valid JSON: {e}") from None
        if not isinstance(body, dict):
            raise HTTPError(400, "body must be a JSON object, e.g. {\"prompt\": \"Once upon\"}")
        return body

    def send_json(self, status: int, obj, headers=None):
        data = (json.dumps(obj, ensure_ascii=False) + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def completions(self, body: dict):
        stream = field(body, "stream", bool, False)
        request = completion_request(body, self.server.tokenizer)
        seq = self.server.engine.submit(request)
        created, rid = int(time.time()), f"cmpl-{secrets.token_hex(8)}"

        def chunk(text, finish_reason):
            return {"id": rid, "object": "text_completion", "created": created,
                    "model": "nanolevels",
                    "choices": [{"index": 0, "text": text, "finish_reason": finish_reason}]}

        if not stream:
            text = "".join(piece for _, piece in seq.stream())
            if seq.finish_reason == "error":
                raise HTTPError(500, "the engine failed on this request; see the server's log")
            out = chunk(text, seq.finish_reason)
            n = len(seq.tokens)
            out["usage"] = {"prompt_tokens": len(request.prompt), "completion_tokens": n,
                            "total_tokens": len(request.prompt) + n}
            self.send_json(200, out)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        try:
            for _, piece in seq.stream():  # one event per token, with the text it made whole
                self.wfile.write(f"data: {json.dumps(chunk(piece, None), ensure_ascii=False)}\n\n"
                                 .encode())
            self.wfile.write(f"data: {json.dumps(chunk('', seq.finish_reason))}\n\n"
                             "data: [DONE]\n\n".encode())
        except OSError:  # the client went away (broken pipe, reset): its slot is freed next step
            seq.cancel()

    def answer(self, body: dict):
        if set(body) - {"question"}:
            raise HTTPError(400, f"unknown field(s) {sorted(set(body) - {'question'})}; "
                                 "send only question")
        question = field(body, "question", str, "")
        if not question.strip():
            raise HTTPError(400, "the question is empty; ask something about a person")
        if self.server.reader is None:
            raise HTTPError(503, self.server.no_reader)
        seq, sources = self.server.reader.submit(question)
        text = "".join(piece for _, piece in seq.stream())
        if seq.finish_reason == "error":
            raise HTTPError(500, "the engine failed on this request; see the server's log")
        self.send_json(200, {"question": question, "answer": text.strip(), "sources": sources})

    def log_message(self, format, *args):
        self.server.log(f"{self.address_string()} {format % args}")


class Server(ThreadingHTTPServer):
    """The engine behind HTTP; reader (for /v1/answer) may be None, and no_reader then says why."""

    daemon_threads = True  # a client still connected never keeps the process alive at exit
    request_queue_size = 128  # connections held before accept(); the default 5 resets a crowd

    def __init__(self, engine, tokenizer, host: str = "127.0.0.1", port: int = 0,
                 reader: Reader | None = None, no_reader: str = "no reader for /v1/answer",
                 log=print):
        self.engine, self.tokenizer, self.reader, self.no_reader, self.log = (
            engine, tokenizer, reader, no_reader, log)
        super().__init__((host, port), Handler)

    @property
    def engines(self) -> list:
        return [self.engine] + ([self.reader.engine] if self.reader else [])

    def serve_forever(self, poll_interval: float = 0.5):
        """Start the engines' step loops, then answer connections until shutdown() or Ctrl-C."""
        for engine in self.engines:
            engine.start()
        super().serve_forever(poll_interval)

    def close(self):
        """Stop listening and stop the engines; requests still running end as cancelled."""
        self.server_close()
        for engine in self.engines:
            engine.stop()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def stats(self) -> dict:
        return {**self.engine.stats(),
                "answer": None if self.reader is None else self.reader.engine.stats()}

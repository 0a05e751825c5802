"""The HTTP layer of serve.py: OpenAI's completions, chat and models in front of the engine.

POST /v1/completions and /v1/chat/completions speak OpenAI's dialect (openai_api.py), streamed as
server-sent events if asked; POST /v1/answer {"question"} retrieves the biographies and reads the
answer with the rag-qa adapter (a chat's last user message is asked the same way); GET /v1/models,
/health, /stats, and /metrics in Prometheus' text format with vLLM's metric names. The standard
library parses HTTP; a fixed pool of handler threads (each waits on its request's tokens while the
engine computes), a deadline for reading each request, and a drain for SIGTERM keep it in bounds.
References: OpenAI's API reference; vLLM's metrics; Prometheus' text exposition format 0.0.4;
karpathy/nanochat's chat_web.py.
"""

import io
import json
import queue
import secrets
import socket
import threading
import time
import traceback
from collections import Counter
from http.server import BaseHTTPRequestHandler, HTTPServer

from nanolevels import openai_api as api
from nanolevels.openai_api import HTTPError, field
from nanolevels.prompting import ANSWER_TOKENS, context_budget, prompt_ids, rag_prompt
from nanolevels.serving import Request, Stopped, check_request

MAX_BODY = 64 * 1024  # bytes; a prompt fills the block long before this
HANDLERS = 64  # connections answered at once; as many more wait for a handler, the rest get a 503
READ_S = 10.0  # seconds a client has to send its whole request (the headers and the body)
WRITE_S = 30.0  # seconds one write may wait for a client that stopped reading
DRAIN_S = 10.0  # seconds open requests get to finish on SIGTERM before their streams are ended
LINGER_S = 1.0  # a refused connection is closed this long after its 503 (see Server.refuse)
BASE = "nanolevels"  # the model's name in /v1/models and in a request's "model"
READER = "nanolevels-rag-qa"  # the reader's: the same model with the rag-qa adapter merged in
ROUTES = {"/v1/completions": "POST", "/v1/chat/completions": "POST", "/v1/answer": "POST",
          "/v1/models": "GET", "/health": "GET", "/stats": "GET", "/metrics": "GET"}
METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD")  # /metrics' labels
PROMETHEUS = "text/plain; version=0.0.4; charset=utf-8"


class Reader:
    """/v1/answer and chat: retrieve the k best documents for a question, read the answer."""

    def __init__(self, engine, tokenizer, index, embedder, k: int = 2):
        self.engine, self.tokenizer, self.index, self.embedder, self.k = (
            engine, tokenizer, index, embedder, k)

    def submit(self, question: str, max_tokens: int = ANSWER_TOKENS, temperature: float = 0.0,
               top_p=None, seed: int = 0):
        """(the answer's Sequence in the engine, ids of the documents in the prompt, best first)."""
        hits = self.index.search(self.embedder.embed([question]), self.k)[0]
        budget = context_budget(self.engine.model)
        prompt, dropped = rag_prompt(question, [doc["text"] for _, doc in hits], self.tokenizer,
                                     budget)
        # a document too long for the block keeps its end, nearest the question, as generate() would
        ids = prompt_ids(self.tokenizer, prompt)[-budget:]
        seq = self.engine.submit(Request(ids, max_tokens, temperature, top_p=top_p, stop=("\n",),
                                         seed=seed))
        return seq, [doc["id"] for _, doc in hits[:len(hits) - dropped]]


class DeadlineReader(io.RawIOBase):
    """A socket's bytes with one deadline for all of them: a timeout per recv() alone lets a client
    that sends a byte every few seconds hold its handler forever (slow loris)."""

    def __init__(self, sock, seconds: float, write_timeout: float):
        self.sock, self.write_timeout = sock, write_timeout
        self.deadline = time.monotonic() + seconds

    def readable(self):
        return True

    def readinto(self, buffer):
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the request took too long to arrive")
        self.sock.settimeout(left)
        try:
            return self.sock.recv_into(buffer)
        finally:
            self.sock.settimeout(self.write_timeout)  # the answer's writes keep theirs


def events(out: queue.Queue, seqs: list):
    """(choice index, seq, token, text, logprob) from the queue the seqs share, until all have ended
    (token None: that seq's end)."""
    index = {seq: i for i, seq in enumerate(seqs)}
    left = len(seqs)
    while left:
        seq, token, piece, logprob = out.get()
        left -= token is None
        yield index[seq], seq, token, piece, logprob


class Handler(BaseHTTPRequestHandler):
    """One connection, one request (HTTP/1.0: the connection closes after the answer, which also
    ends a stream); self.server is the Server below, which holds the engines."""

    server_version = "nanolevels-serve"
    default_request_version = "HTTP/1.0"  # an error before the version is read has a status line
    timeout = WRITE_S  # the socket's: a write to a client that stopped reading fails after it

    def setup(self):
        super().setup()
        self.rfile.close()  # the plain socket file, replaced by one with a deadline
        self.rfile = io.BufferedReader(DeadlineReader(self.connection, self.server.read_s,
                                                      self.timeout))
        self.label = "other"  # the route in /metrics' labels

    def do_GET(self):
        self.route()

    # every method gets a JSON answer: route() says which method a path takes
    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = do_GET

    def route(self):
        server = self.server
        with server.lock:
            server.active += 1  # drain() waits for this to reach 0
        try:
            self.dispatch(self.path.split("?", 1)[0])
        except HTTPError as e:  # a bad input: a 4xx with OpenAI's error body; the server goes on
            self.send_error_json(e.status, str(e), e.param, e.code, e.headers)
        except ValueError as e:  # the engine's check of a request
            self.send_error_json(400, str(e), api.param_of(str(e)))
        except queue.Full:
            self.send_error_json(503, "server busy: the queue of waiting requests is full; retry "
                                      "in a moment", headers={"Retry-After": "1"})
        except Stopped:
            self.send_error_json(503, "the server is shutting down; retry in a moment",
                                 headers={"Retry-After": "1"})
        except OSError:  # the client went away while sending its request: nobody to answer
            self.close_connection = True
        finally:
            with server.lock:
                server.active -= 1

    def dispatch(self, path: str):
        if path not in ROUTES:
            raise HTTPError(404, f"no such path {path}; this server has " +
                            ", ".join(f"{m} {p}" for p, m in ROUTES.items()))
        self.label = path
        if ROUTES[path] != self.command:
            raise HTTPError(405, f"{path} takes {ROUTES[path]}, not {self.command}",
                            headers={"Allow": ROUTES[path]})
        if self.server.draining.is_set():
            raise Stopped()
        if path == "/v1/completions":
            self.completions(self.read_json())
        elif path == "/v1/chat/completions":
            self.chat(self.read_json())
        elif path == "/v1/answer":
            self.answer(self.read_json())
        elif path == "/v1/models":
            self.send_json(200, self.server.model_list())
        elif path == "/metrics":
            self.send_bytes(200, self.server.metrics_text().encode(), PROMETHEUS)
        elif path == "/stats":
            self.send_json(200, self.server.stats())
        else:
            self.send_json(200, {"status": "ok"})

    def receive(self, n: int) -> bytes:
        try:
            return self.rfile.read(n)
        except TimeoutError:
            raise HTTPError(408, f"the request did not arrive within {self.server.read_s:g} s; "
                                 "send it whole") from None

    def read_json(self) -> dict:
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            raise HTTPError(411, "send the body with a Content-Length header")
        if int(length) > MAX_BODY:
            if int(length) <= 16 * MAX_BODY:
                self.receive(int(length))  # read it: the client gets this answer, not a reset
            raise HTTPError(413, f"body of {length} bytes is over the limit of {MAX_BODY}")
        data = self.receive(int(length))
        try:
            body = json.loads(data)
        except RecursionError:  # 30,000 [ fit in 64 KB; the parser recurses once per level
            raise HTTPError(400, "body is nested too deeply; a request nests 4 levels at most") \
                from None
        except ValueError as e:
            raise HTTPError(400, f"body is not valid JSON: {e}") from None
        if not isinstance(body, dict):
            raise HTTPError(400, "body must be a JSON object, e.g. {\"prompt\": \"Once upon\"}")
        return body

    def send_response(self, code, message=None):
        self.server.count(self.command if self.command in METHODS else "other", self.label, code)
        super().send_response(code, message)

    def send_bytes(self, status: int, data: bytes, kind: str, headers=None):
        try:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            if self.command != "HEAD":  # HEAD: the headers GET would have, no body
                self.wfile.write(data)
        except OSError:  # the client went away before its answer: nothing left to do
            self.close_connection = True

    def send_json(self, status: int, obj, headers=None):
        self.send_bytes(status, (json.dumps(obj, ensure_ascii=False) + "\n").encode(),
                        "application/json", headers)

    def send_error_json(self, status, message, param=None, code=None, headers=None):
        self.send_json(status, api.error_body(status, message, param, code), headers)

    def send_error(self, code, message=None, explain=None):
        """The standard library's own errors (a malformed request line, an unknown method, headers
        too long) in the same JSON as ours, not its HTML page."""
        self.close_connection = True
        self.send_error_json(int(code), message or self.responses[code][0])

    def stream(self, seqs: list, chunks):
        """Send each chunk as a server-sent event, then [DONE]. Any write error (the client left:
        a broken pipe, a reset, a timeout), the headers' included, cancels the seqs: their slots
        are freed at the engine's next step."""
        try:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.end_headers()
            for chunk in chunks:
                self.wfile.write(f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n".encode())
            self.wfile.write(b"data: [DONE]\n\n")
        except OSError:
            for seq in seqs:
                seq.cancel()
            self.close_connection = True

    def completions(self, body: dict):
        c = api.completion(body, self.server.tokenizer)
        name, engine = self.server.engine_for(c.model)
        out = queue.Queue()  # every choice's events, in the order the engine makes them
        seqs = self.server.submit_all(engine, c.requests, out)
        choices = [api.Choice(i, self.server.tokenizer, echo, c.logprobs is not None)
                   for i, echo in enumerate(c.echoes)]
        rid, created = f"cmpl-{secrets.token_hex(8)}", int(time.time())

        def chunk(parts, **extra):
            return {"id": rid, "object": "text_completion", "created": created, "model": name,
                    "choices": parts, **extra}

        def parts():  # each engine event as its choice's part of a chunk
            begun = set()
            for i, seq, token, piece, logprob in events(out, seqs):
                if i not in begun:  # the echoed prompt, if asked, comes first
                    begun.add(i)
                    if (part := choices[i].begin(seq)) is not None:
                        yield part
                yield (choices[i].end(seq.finish_reason) if token is None
                       else choices[i].add(seq, token, piece, logprob))

        def usage():
            return api.usage(c.prompt_tokens, sum(len(seq.tokens) for seq in seqs))

        if c.stream:
            def chunks():
                yield from (chunk([part]) for part in parts())
                if c.include_usage:
                    yield chunk([], usage=usage())
            self.stream(seqs, chunks())
            return
        for _ in parts():
            pass
        if any(seq.finish_reason == "error" for seq in seqs):
            raise HTTPError(500, "the engine failed on this request; see the server's log")
        self.send_json(200, chunk([choice.whole() for choice in choices], usage=usage()))

    def chat(self, body: dict):
        c = api.chat(body)
        reader = self.server.reader
        if reader is None:
            raise HTTPError(503, self.server.no_reader)
        if self.server.engine_for(c.model or READER)[0] != READER:
            raise HTTPError(400, f"model {c.model} only continues text (/v1/completions); chat "
                                 f"is answered by {READER}: retrieval and the rag-qa adapter",
                            "model")
        seq, sources = reader.submit(c.question, **c.sampling)
        rid, created = f"chatcmpl-{secrets.token_hex(8)}", int(time.time())

        def usage():
            return api.usage(len(seq.request.prompt), len(seq.tokens))

        if not c.stream:
            answer = "".join(piece for _, piece, _ in seq.stream()).lstrip()
            if seq.finish_reason == "error":
                raise HTTPError(500, "the engine failed on this request; see the server's log")
            self.send_json(200, api.chat_message(rid, created, READER, answer, seq.finish_reason,
                                                 sources, usage()))
            return

        def chunks():
            yield api.chat_chunk(rid, created, READER, {"role": "assistant", "content": ""},
                                 sources=sources)
            text = ""
            for _, piece, _ in seq.stream():
                delta = (text + piece).lstrip()[len(text.lstrip()):]  # the answer, as above
                text += piece
                if delta:
                    yield api.chat_chunk(rid, created, READER, {"content": delta})
            yield api.chat_chunk(rid, created, READER, {}, seq.finish_reason)
            if c.include_usage:
                yield api.chat_chunk(rid, created, READER, None, usage=usage())

        self.stream([seq], chunks())

    def answer(self, body: dict):
        if set(body) - {"question"}:
            raise HTTPError(400, f"unknown field(s) {sorted(set(body) - {'question'})}; "
                                 "send only question", min(set(body) - {"question"}))
        question = field(body, "question", str, required=True)
        if not question.strip():
            raise HTTPError(400, "the question is empty; ask something about a person", "question")
        if self.server.reader is None:
            raise HTTPError(503, self.server.no_reader)
        seq, sources = self.server.reader.submit(question)
        text = "".join(piece for _, piece, _ in seq.stream())
        if seq.finish_reason == "error":
            raise HTTPError(500, "the engine failed on this request; see the server's log")
        self.send_json(200, {"question": question, "answer": text.strip(), "sources": sources})

    def log_message(self, format, *args):
        self.server.log(f"{self.address_string()} {format % args}")


def prometheus_text(families) -> str:
    """Prometheus' text exposition format: per family (name, type, help, samples) its HELP and
    TYPE lines, then a line per sample (labels, value); a histogram's value is a
    serving.Histogram, written as cumulative _bucket{le=...} counts, then _sum and _count."""
    def labels(d):
        escape = {ord("\\"): "\\\\", ord('"'): '\\"', ord("\n"): "\\n"}
        return "{" + ",".join(f'{k}="{str(v).translate(escape)}"' for k, v in d.items()) + "}"

    lines = []
    for name, kind, help_text, samples in families:
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
        for tags, value in samples:
            if kind != "histogram":
                lines.append(f"{name}{labels(tags)} {value}")
                continue
            total = 0
            for bound, count in zip([*map(float, value.bounds), "+Inf"], value.counts):
                total += count
                lines.append(f"{name}_bucket{labels({**tags, 'le': bound})} {total}")
            lines += [f"{name}_sum{labels(tags)} {value.sum!r}",
                      f"{name}_count{labels(tags)} {total}"]
    return "\n".join(lines) + "\n"


class Server(HTTPServer):
    """The engines behind HTTP; reader (for /v1/answer and chat) may be None, no_reader says why.

    serve_forever()'s thread accepts connections and hands each to a fixed pool of handler
    threads (HTTPServer alone answers one at a time; ThreadingHTTPServer starts a thread for every
    connection, without a limit)."""

    request_queue_size = 128  # connections the OS holds before accept(); 5 would reset a crowd

    def __init__(self, engine, tokenizer, host: str = "127.0.0.1", port: int = 0,
                 reader: Reader | None = None, no_reader: str = "no reader for /v1/answer",
                 log=print, handlers: int = HANDLERS, read_s: float = READ_S):
        self.engine, self.tokenizer, self.reader, self.no_reader, self.log = (
            engine, tokenizer, reader, no_reader, log)
        self.models = {BASE: engine, **({READER: reader.engine} if reader else {})}
        self.read_s = read_s
        self.connections = queue.Queue(handlers)  # accepted, waiting for a handler
        self.handlers = [threading.Thread(target=self.handle_connections, name=f"http-{i}",
                                          daemon=True) for i in range(handlers)]
        self.lingering = []  # (time, socket) of refused connections, to close after LINGER_S
        self.lock = threading.Lock()  # guards active and http
        self.active = 0  # requests being answered
        self.http = Counter()  # (method, route, status) -> responses, for /metrics
        self.draining = threading.Event()  # set: every request gets a 503
        self.hurry = threading.Event()  # set: drain() stops waiting for open requests
        self.created = int(time.time())
        super().__init__((host, port), Handler)

    def serve_forever(self, poll_interval: float = 0.5):
        """Start the engines' step loops and the handlers, then accept until shutdown()."""
        for engine in self.models.values():
            engine.start()
        for thread in self.handlers:
            thread.start()
        super().serve_forever(poll_interval)

    def process_request(self, request, client_address):
        """serve_forever's thread, for each accepted connection: to a handler, or a 503."""
        try:
            self.connections.put_nowait((request, client_address))
        except queue.Full:
            self.refuse(request)

    def handle_connections(self):
        """A handler thread: answer the connections one after another until close() sends None."""
        while (item := self.connections.get()) is not None:
            request, client_address = item
            try:
                self.finish_request(request, client_address)
            except Exception:  # noqa: BLE001 (a bug: log it, answer the next connection)
                self.handle_error(request, client_address)
            finally:
                self.shutdown_request(request)

    def refuse(self, sock):
        """Every handler is busy and as many connections wait: a 503 at once, unread."""
        body = json.dumps(api.error_body(503, "server busy: every connection handler is taken; "
                                              "retry in a moment")).encode()
        head = ("HTTP/1.0 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nRetry-After: 1\r\n\r\n").encode()
        self.count("other", "other", 503)
        try:
            sock.setblocking(False)
            sock.sendall(head + body)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        # closed with the request still unread, the socket would send a reset, and a reset can
        # destroy the 503 before the client reads it: close it later, reading what came meanwhile
        self.lingering.append((time.monotonic(), sock))

    def service_actions(self):
        """serve_forever calls this between connections: close the refused ones that lingered."""
        while self.lingering and time.monotonic() - self.lingering[0][0] > LINGER_S:
            sock = self.lingering.pop(0)[1]
            try:
                while sock.recv(65536):
                    pass
            except OSError:
                pass
            sock.close()

    def handle_error(self, request, client_address):
        self.log(f"error answering {client_address}:\n{traceback.format_exc()}")

    def drain(self, seconds: float = DRAIN_S):
        """Stop accepting; give the open requests `seconds` to finish, then end the rest (a stream
        gets its last event and [DONE]); stop the engines. From another thread than serve_forever's.
        """
        self.draining.set()  # a request that reaches a handler from now on gets a 503
        self.shutdown()  # serve_forever returns: nothing more is accepted
        self.server_close()  # and the OS refuses new connections
        self.wait(lambda: self.active == 0 and self.connections.empty(), seconds)
        for engine in self.models.values():
            engine.stop()  # what still runs ends as "cancelled": its handler writes the last event
        self.hurry.clear()
        self.wait(lambda: self.active == 0, 2.0)
        self.close()

    def wait(self, done, seconds: float):
        deadline = time.monotonic() + seconds
        while not done() and time.monotonic() < deadline and not self.hurry.is_set():
            time.sleep(0.02)

    def close(self):
        """Stop listening, the engines and the handlers; requests still running end as cancelled."""
        self.server_close()
        for engine in self.models.values():
            engine.stop()
        for _ in self.handlers:
            try:
                self.connections.put(None, timeout=0.1)
            except queue.Full:  # handlers still busy: daemon threads, they end with the process
                break
        for _, sock in self.lingering:
            sock.close()
        self.lingering.clear()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def engine_for(self, model: str | None) -> tuple:
        """(name, engine) of a request's "model" (none: the base model); a 404 for another."""
        if model is None:
            return BASE, self.engine
        if model not in self.models:
            raise HTTPError(404, f"no model {model!r}; this server has {', '.join(self.models)} "
                                 "(GET /v1/models)", "model", "model_not_found")
        return model, self.models[model]

    def submit_all(self, engine, requests: list, out: queue.Queue) -> list:
        """Every request's Sequence, or none: all are checked first, and if the queue fills up on
        the way, those already in are cancelled before the 503."""
        for r in requests:
            check_request(r, engine.model.config.block_size)
        seqs = []
        try:
            for r in requests:
                seqs.append(engine.submit(r, out))
        except (queue.Full, Stopped):
            for seq in seqs:
                seq.cancel()
            raise
        return seqs

    def count(self, method: str, route: str, status: int) -> None:
        with self.lock:
            self.http[method, route, str(int(status))] += 1

    def model_list(self) -> dict:
        block = self.engine.model.config.block_size
        return {"object": "list", "data": [
            api.model_card(name, self.created, block, None if name == BASE else BASE)
            for name in self.models]}

    def stats(self) -> dict:
        return {**self.engine.stats(),
                "answer": None if self.reader is None else self.reader.engine.stats()}

    def metrics_text(self) -> str:
        """/metrics: vLLM's names where they fit (label model_name: which engine)."""
        per = {name: engine.metrics() for name, engine in self.models.items()}

        def each(key):  # a key of Engine.metrics(), or a function of them
            return [({"model_name": n}, key(m) if callable(key) else m[key])
                    for n, m in per.items()]

        with self.lock:
            http = sorted(self.http.items())
        return prometheus_text([
            ("vllm:num_requests_running", "gauge", "Requests in the decode batch.",
             each("running")),
            ("vllm:num_requests_waiting", "gauge", "Requests waiting for a slot.",
             each("waiting")),
            ("vllm:kv_cache_usage_perc", "gauge",
             "Fraction of the KV cache's slots in use (1 = all).",
             each(lambda m: m["running"] / m["slots"])),
            ("vllm:prompt_tokens_total", "counter", "Prompt tokens prefilled.",
             each("prompt_tokens")),
            ("vllm:generation_tokens_total", "counter", "Tokens generated.",
             each("generation_tokens")),
            ("vllm:request_success_total", "counter",
             "Requests finished, by reason: stop, length (vLLM's), cancelled, error (ours).",
             [({"model_name": n, "finished_reason": r}, c)
              for n, m in per.items() for r, c in sorted(m["finished"].items())]),
            ("vllm:time_to_first_token_seconds", "histogram",
             "Seconds from a request's arrival in the engine to its first token.", each("ttft")),
            ("vllm:time_per_output_token_seconds", "histogram",
             "Seconds between a request's consecutive tokens.", each("tpot")),
            ("vllm:e2e_request_latency_seconds", "histogram",
             "Seconds from a request's arrival in the engine to its end.", each("e2e")),
            ("http_requests_total", "counter", "HTTP responses by method, route and status.",
             [({"method": m, "handler": r, "status": s}, c) for (m, r, s), c in http]),
        ])

"""The server under a careless or hostile client: malformed bodies, disconnects, crowds, slow
senders, every method, shutdown by signal (issue 24's server probes, each failing on its main)."""
# ruff: noqa: F811 (the fixtures imported from test_serve are the tests' arguments)

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

import pytest
from test_serve import (ROOT, Running, adapter, serve_args, server,  # noqa: F401
                        slow_decode, wait_for)

import serve
from nanolevels.checkpoint import load_model
from nanolevels.server import Handler, Server
from nanolevels.serving import Engine


@pytest.fixture
def fresh(tiny_run):
    """A Server of its own, for a test that counts or changes what it does: fresh(**kwargs)."""
    running = []

    def make(slots=4, max_queue=8, **kwargs):
        model, tok, _ = load_model(tiny_run["checkpoint"])
        s = Running(Server(Engine(model, tok, slots=slots, max_queue=max_queue), tok,
                           log=lambda line: None, **kwargs))
        running.append(s.__enter__())
        return s

    yield make
    for s in running:
        s.__exit__(None, None, None)


def still_serves(server):
    return server.request("POST", "/v1/completions", {"prompt": "Ada", "max_tokens": 2})[0] == 200


def test_deeply_nested_json_is_a_400_not_a_silence(server):
    for raw in (b"[" * 30000, b'{"prompt": ' + b"[" * 30000, b'{"a":' * 10000):
        assert len(raw) < 64 * 1024
        status, out = server.request("POST", "/v1/completions", raw=raw)
        assert status == 400 and "nested too deeply" in out["error"]["message"]
    assert still_serves(server)


@pytest.mark.parametrize("path, body, param, message", [
    ("/v1/completions", {"prompt": None}, "prompt", "prompt must be a string"),
    ("/v1/completions", {"prompt": [None]}, "prompt", "prompt must be a string"),
    ("/v1/completions", {"prompt": []}, "prompt", "prompt must be a string"),
    ("/v1/completions", {"prompt": {"text": "a"}}, "prompt", "prompt must be a string"),
    ("/v1/completions", {"prompt": [1.5]}, "prompt", "prompt must be a string"),
    ("/v1/completions", {"prompt": [10 ** 6]}, "prompt", "token ids must be in 0.."),
    ("/v1/completions", {"prompt": "a", "stop": [None]}, "stop", "stop must be a string"),
    ("/v1/completions", {"prompt": "a", "n": "2"}, "n", "n must be an integer"),
    ("/v1/completions", {"prompt": "a", "echo": 1}, "echo", "echo must be true or false"),
    ("/v1/completions", {"prompt": "a", "stream_options": 5}, "stream_options", "an object"),
    ("/v1/answer", {"question": None}, "question", "question must be a string, got null"),
    ("/v1/answer", {}, "question", "missing field: question"),
    ("/v1/chat/completions", {"messages": None}, "messages", "messages must be a list, got null"),
    ("/v1/chat/completions", {"messages": [{"role": None, "content": "Who?"}]},
     "messages[0].role", "messages[0].role must be a string"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": None}]},
     "messages[0].content", "must be a string or a list of text parts"),
    ("/v1/chat/completions", {"messages": ["Who?"]}, "messages", "messages[0] must be an object"),
])
def test_nulls_and_wrong_types_are_a_400_naming_the_field(server, path, body, param, message):
    status, out = server.request("POST", path, body)
    assert status == 400 and out["error"]["param"] == param, out
    assert message in out["error"]["message"] and out["error"]["type"] == "invalid_request_error"
    assert still_serves(server)


def test_null_means_the_default_for_an_optional_field(server):
    body = {"prompt": "Ada", "max_tokens": 3, "temperature": 0, "ignore_eos": True}
    nulls = {"stop": None, "seed": None, "top_p": None, "n": None, "logprobs": None, "echo": None}
    (s1, a), (s2, b) = (server.request("POST", "/v1/completions", x) for x in (body, body | nulls))
    assert s1 == s2 == 200 and a["choices"] == b["choices"]


@pytest.mark.parametrize("temperature", [b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1"])
def test_a_temperature_that_is_no_number_or_negative_is_a_400(server, temperature):
    raw = b'{"prompt": "Ada Jo", "temperature": ' + temperature + b"}"
    status, out = server.request("POST", "/v1/completions", raw=raw)
    assert status == 400 and out["error"]["param"] == "temperature", out


def test_a_tiny_temperature_is_greedy(server):
    body = {"prompt": "Ada Jo", "max_tokens": 12, "ignore_eos": True}
    greedy = server.request("POST", "/v1/completions", body | {"temperature": 0})[1]
    for t in (1e-45, 1e-300, 1e-6):
        status, out = server.request("POST", "/v1/completions", body | {"temperature": t})
        assert status == 200 and out["choices"][0]["text"] == greedy["choices"][0]["text"]


@pytest.mark.parametrize("path, raw, param", [
    ("/v1/answer", b'{"question": "Who is \\ud800 Crane?"}', "question"),
    ("/v1/completions", b'{"prompt": "a\\udfff"}', "prompt"),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "\\ud83d"}]}',
     "messages[0].content"),
])
def test_a_lone_surrogate_is_a_clear_400(server, path, raw, param):
    status, out = server.request("POST", path, raw=raw)
    assert status == 400 and out["error"]["param"] == param
    assert "lone surrogate" in out["error"]["message"] and "codec" not in out["error"]["message"]


@pytest.mark.parametrize("method, path, status", [
    ("PUT", "/v1/completions", 405), ("DELETE", "/v1/completions", 405),
    ("OPTIONS", "/v1/completions", 405), ("PATCH", "/health", 405), ("DELETE", "/nope", 404),
    ("BREW", "/v1/completions", 501),
])
def test_every_method_and_path_gets_a_json_error(server, method, path, status):
    got, headers, out = server.call(method, path)
    assert got == status and headers["Content-Type"] == "application/json"
    assert json.loads(out)["error"]["message"]
    if status == 405:
        assert headers["Allow"] == ("POST" if path.startswith("/v1") else "GET")


def test_head_gets_json_headers_and_no_body(server):
    status, headers, out = server.call("HEAD", "/health")
    assert status == 405 and headers["Content-Type"] == "application/json" and out == b""
    assert headers["Allow"] == "GET"


def test_a_malformed_request_line_gets_json(server):
    with socket.create_connection((server.host, server.port), timeout=10) as sock:
        sock.sendall(b"GARBAGE\r\n\r\n")
        reply = b""
        while chunk := sock.recv(4096):
            reply += chunk
    head, body = reply.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.0 400") and b"application/json" in head
    assert json.loads(body)["error"]["message"]


def test_a_failed_header_write_cancels_the_stream(fresh, monkeypatch):
    """The response's headers are the first write: a client already gone makes it fail."""
    slow_decode(monkeypatch, 0.02)  # 60 tokens: over a second, if nothing cancels them
    end_headers = Handler.end_headers

    def broken(handler):
        if any(b"text/event-stream" in line for line in handler._headers_buffer):
            raise BrokenPipeError(32, "Broken pipe")
        end_headers(handler)

    monkeypatch.setattr(Handler, "end_headers", broken)
    s = fresh()
    engine = s.server.engine
    body = json.dumps({"prompt": "Ada", "max_tokens": 60, "stream": True, "ignore_eos": True})
    with pytest.raises(Exception):  # noqa: B017 (the connection ends without an answer)
        s.call("POST", "/v1/completions", body.encode())
    wait_for(lambda: engine.stats()["finished"].get("cancelled", 0) == 1)
    assert engine.stats()["running"] == 0 and "length" not in engine.stats()["finished"]


def submitted(engine) -> int:
    stats = engine.stats()
    return stats["running"] + stats["waiting"] + sum(stats["finished"].values())


def test_streaming_clients_that_leave_right_after_sending_are_cancelled(fresh, monkeypatch):
    slow_decode(monkeypatch, 0.02)
    s = fresh(slots=4, max_queue=16)
    engine = s.server.engine
    body = json.dumps({"prompt": "Ada", "max_tokens": 60, "stream": True, "ignore_eos": True})
    request = (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
               % len(body) + body.encode())
    for i in range(10):
        sock = socket.create_connection((s.host, s.port), timeout=10)
        sock.sendall(request)
        # the server has read it and submitted it
        wait_for(lambda i=i: submitted(engine) > i)
        # then leave with a reset (linger 0): the server's next write fails, whichever it is
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    wait_for(lambda: engine.stats()["running"] == 0 and engine.stats()["waiting"] == 0, 30)
    assert engine.stats()["finished"] == {"cancelled": 10}


def test_the_handler_pool_is_bounded_and_a_crowd_gets_503s(fresh):
    s = fresh(handlers=4, read_s=2.0)
    # serve_forever starts the handlers
    wait_for(lambda: all(t.is_alive() for t in getattr(s.server, "handlers", [])))
    before = threading.active_count()
    idle = []
    for _ in range(40):  # connections that never finish their request
        sock = socket.create_connection((s.host, s.port), timeout=10)
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nContent-Le")
        idle.append(sock)
    try:
        # 4 are being read and up to 4 wait for a handler; the others get a 503 at once, unread
        wait_for(lambda: s.server.http["other", "other", "503"] >= 40 - 8)
        assert threading.active_count() - before <= 1  # no thread per connection
        refused = 0
        for sock in idle:
            sock.settimeout(0.5)
            try:
                refused += sock.recv(4096).startswith(b"HTTP/1.0 503")
            except TimeoutError:  # held: read by a handler, or waiting for one
                pass
        assert refused >= 40 - 8
        # the idle ones run out of time and their handlers serve again
        wait_for(lambda: still_serves(s), 30)
    finally:
        for sock in idle:
            sock.close()


def closed_by_server(sock) -> bool:
    try:
        return sock.recv(1, socket.MSG_DONTWAIT | socket.MSG_PEEK) == b""
    except BlockingIOError:  # nothing to read, and still open
        return False
    except OSError:  # reset
        return True


def test_a_slow_loris_cannot_hold_a_handler(fresh):
    s = fresh(handlers=2, read_s=1.0)
    request = b"POST /v1/completions HTTP/1.1\r\nContent-Length: 100\r\n\r\n" + b" " * 100
    sent = 0
    with socket.create_connection((s.host, s.port), timeout=10) as sock:
        while sent < len(request) and not closed_by_server(sock):  # a byte every 0.1 s
            try:
                sock.sendall(request[sent:sent + 1])
            except OSError:
                break
            sent += 1
            time.sleep(0.1)
    assert sent < len(request)  # the server closed the connection before it was all sent
    assert still_serves(s)


def test_a_burst_gets_200s_or_503s_with_retry_after_and_nothing_mixed(fresh, monkeypatch):
    slow_decode(monkeypatch, 0.02)  # each request takes a while: the burst meets a full server
    s = fresh(slots=2, max_queue=2, handlers=6)
    prompts = [f"Ada {i} Jo" for i in range(30)]

    def body(p):
        return json.dumps({"prompt": p, "max_tokens": 8, "temperature": 0}).encode()

    results = [None] * len(prompts)

    def send(i):
        results[i] = s.call("POST", "/v1/completions", body(prompts[i]))

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    statuses = [status for status, _, _ in results]
    assert set(statuses) == {200, 503}, statuses
    for (status, headers, out), p in zip(results, prompts):
        if status == 503:
            assert headers["Retry-After"] == "1" and "busy" in json.loads(out)["error"]["message"]
        else:  # the same text as the prompt gets alone
            alone = json.loads(s.call("POST", "/v1/completions", body(p))[2])
            assert json.loads(out)["choices"][0]["text"] == alone["choices"][0]["text"]


def read_events(response_file):
    """The data: payloads of a stream until [DONE] or the end of the connection."""
    events = []
    for line in response_file:
        if line.startswith(b"data: "):
            events.append(line[6:].strip().decode())
            if events[-1] == "[DONE]":
                break
    return events


def open_stream(host, port, body):
    """A streamed completion whose first event has arrived: (socket, its file)."""
    sock = socket.create_connection((host, port), timeout=30)
    data = json.dumps({**body, "stream": True}).encode()
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % len(data) + data)
    f = sock.makefile("rb")
    while not f.readline().startswith(b"data: "):
        pass
    return sock, f


def test_drain_finishes_short_streams_and_ends_long_ones_with_a_last_event(fresh, monkeypatch):
    slow_decode(monkeypatch, 0.1)  # a long stream takes 6 s, a short one 0.4 s
    s = fresh(slots=4)
    long = [open_stream(s.host, s.port, {"prompt": "Ada", "max_tokens": 60, "ignore_eos": True})
            for _ in range(2)]
    short = open_stream(s.host, s.port, {"prompt": "Ada", "max_tokens": 4, "ignore_eos": True})
    drain = threading.Thread(target=s.server.drain, args=(2.0,))
    drain.start()
    ends = []
    for sock, f in [*long, short]:
        events = read_events(f)
        assert events[-1] == "[DONE]"
        ends.append(json.loads(events[-2])["choices"][0]["finish_reason"])
        sock.close()
    assert ends == ["cancelled", "cancelled", "length"]
    drain.join(30)
    assert not drain.is_alive()
    with pytest.raises(ConnectionRefusedError):  # nothing is accepted any more
        socket.create_connection((s.host, s.port), timeout=5)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_serve_py_drains_on_sigterm_and_sigint_then_exits_0(tiny_run, adapter, tmp_path, sig):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # SIGINT as a terminal delivers it: a suite started in the background (`cmd &`) ignores
    # SIGINT, its children inherit that, and serve.py must install its handler anyway
    proc = subprocess.Popen([sys.executable, "serve.py", *serve_args(tiny_run, adapter, tmp_path),
                             "--drain-seconds", "0"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = threading.Timer(300, proc.kill)  # whatever goes wrong, the test ends
    deadline.start()
    try:
        line = proc.stdout.readline()
        while line and not line.startswith("serving on"):  # the index is built first, and says so
            line = proc.stdout.readline()
        assert line.startswith("serving on http://127.0.0.1:") and "/v1/answer: ready" in line
        port = int(line.split()[2].rsplit(":", 1)[1])
        streams = [open_stream("127.0.0.1", port, {"prompt": "Ada", "max_tokens": 64,
                                                   "ignore_eos": True}) for _ in range(6)]
        proc.send_signal(sig)
        for sock, f in streams:  # each stream ends with its finish reason, then [DONE]
            events = read_events(f)
            assert events[-1] == "[DONE]"
            assert json.loads(events[-2])["choices"][0]["finish_reason"] in ("length", "cancelled")
            sock.close()
        assert proc.wait(timeout=60) == 0
        err = proc.stderr.read()
        assert "draining" in err and "stopped after draining" in err and "Traceback" not in err
    finally:
        deadline.cancel()
        proc.kill()


def test_serve_py_flags(tiny_run, adapter, tmp_path):
    with pytest.raises(ValueError, match="--handlers"):
        serve.parse_args(["--handlers", "0"])
    with pytest.raises(ValueError, match="--drain-seconds"):
        serve.parse_args(["--drain-seconds", "nan"])

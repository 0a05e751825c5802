"""The OpenAI dialect of serve.py: request bodies -> the engine's Requests, results -> responses.

Values in, values out, no sockets (server.py does the HTTP). The layouts are those of OpenAI's API
reference: /v1/completions (choices, logprobs, streamed chunks, usage), /v1/chat/completions and
/v1/models; an error body is {"error": {"message", "type", "param", "code"}}, so a client finds
the field it got wrong in error.param. Ours on top: top_k, ignore_eos, and a chat answer's sources.
References: OpenAI's API reference (completions, chat, models); vLLM's OpenAI-compatible server.
"""

import codecs
import json
import re
import secrets
from dataclasses import dataclass

from nanolevels.prompting import ANSWER_TOKENS, prompt_ids
from nanolevels.serving import Request

MAX_CHOICES = 16  # prompts x n of one request: each choice is a sequence of its own in the engine
COMPLETION_FIELDS = ("model", "prompt", "max_tokens", "temperature", "top_p", "top_k", "stop",
                     "stream", "stream_options", "seed", "n", "logprobs", "echo", "ignore_eos")
CHAT_FIELDS = ("model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p",
               "seed", "stream", "stream_options")
# fields that clients send with the value that changes nothing (LangChain sends the penalties):
# that value (or null) is accepted, any other is a 400 that names the field
NEUTRAL = {"best_of": 1, "frequency_penalty": 0, "presence_penalty": 0, "logit_bias": {},
           "suffix": ""}
CHAT_NEUTRAL = {"n": 1, "frequency_penalty": 0, "presence_penalty": 0, "logit_bias": {},
                "logprobs": False}
KINDS = {str: "a string", int: "an integer", float: "a number", bool: "true or false",
         dict: "an object", list: "a list"}


class HTTPError(Exception):
    """An answer other than 200: its status, the message, the request field it is about."""

    def __init__(self, status: int, message: str, param: str | None = None,
                 code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.param, self.code, self.headers = status, param, code, headers or {}


def error_body(status: int, message: str, param=None, code=None) -> dict:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def field(body: dict, name: str, kind: type, default=None, required: bool = False, where=""):
    """body[name], or default when absent or null; a 400 naming it (after `where`, the path of
    body in the request) when it has another JSON type than kind, or is required and missing."""
    value, path = body.get(name), where + name
    if value is None and not required:
        return default
    if value is None and name not in body:
        raise HTTPError(400, f"missing field: {path}", path)
    # an integer is a number too; but true is no number in JSON, though bool is an int in Python
    if isinstance(value, bool):
        ok = kind is bool
    else:
        ok = isinstance(value, (int, float) if kind is float else kind)
    if not ok:
        raise HTTPError(400, f"{path} must be {KINDS[kind]}, got {json.dumps(value)}", path)
    if kind is str:
        check_text(value, path)
    return value


def check_text(text: str, name: str) -> None:
    """A 400 for a string that is not Unicode text: JSON may escape half of a UTF-16 pair alone."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise HTTPError(400, f"{name} holds a lone surrogate (U+{ord(text[e.start]):04X} at "
                             f"character {e.start}): a \\ud800-\\udfff escape must be one of a "
                             "pair; send valid Unicode text", name) from None


def check_fields(body: dict, fields, neutral: dict) -> None:
    """A 400 for a field this server does not take, or takes only with its neutral value."""
    unknown = sorted(set(body) - set(fields) - set(neutral))
    if unknown:
        raise HTTPError(400, f"unknown field(s) {unknown}; this server takes "
                             f"{', '.join(fields)}", unknown[0])
    for name, value in neutral.items():
        if body.get(name) not in (None, value):
            raise HTTPError(400, f"{name} is not supported; leave it out (or send "
                                 f"{json.dumps(value)})", name)


def param_of(message: str, fields=COMPLETION_FIELDS) -> str | None:
    """The field an engine's ValueError is about: the one its message opens with."""
    return next((f for f in fields if re.match(rf"(the )?{f}\b", message)), None)


def stream_usage(body: dict) -> bool:
    """stream_options.include_usage: a last chunk with the usage, before [DONE]."""
    options = field(body, "stream_options", dict, {})
    if set(options) - {"include_usage"}:
        raise HTTPError(400, "stream_options takes only include_usage", "stream_options")
    if options and not field(body, "stream", bool, False):
        raise HTTPError(400, "stream_options needs stream: true", "stream_options")
    return field(options, "include_usage", bool, False, where="stream_options.")


def prompts(body: dict, tokenizer) -> list[tuple[list[int], str, int]]:
    """(token ids to feed, the text they echo, the first id the text is of) per prompt. Text gets
    <|endoftext|> first, as in pretraining (prompt_ids); token ids (a list of ints, or a list of
    such lists) go as they are."""
    p = body.get("prompt")
    if "prompt" not in body:
        raise HTTPError(400, "missing field: prompt (the text to continue)", "prompt")

    def ints(x):
        return isinstance(x, list) and x and all(type(i) is int for i in x)

    if isinstance(p, str) or ints(p):
        items = [p]
    elif isinstance(p, list) and p and all(isinstance(x, str) or ints(x) for x in p):
        items = p
    else:
        raise HTTPError(400, "prompt must be a string, a list of strings, a list of token ids or "
                             f"a list of such lists, got {json.dumps(p)[:80]}", "prompt")
    out = []
    for item in items:
        if isinstance(item, str):
            check_text(item, "prompt")
            out.append((prompt_ids(tokenizer, item), item, 1))
        elif all(0 <= i < tokenizer.vocab_size for i in item):
            out.append((item, tokenizer.decode(item), 0))
        else:
            raise HTTPError(400, f"prompt's token ids must be in 0..{tokenizer.vocab_size - 1}",
                            "prompt")
    return out


@dataclass
class Completion:
    """A parsed /v1/completions body: one engine Request per choice, in the order of the choices
    (OpenAI's: the n choices of the first prompt, then of the second...)."""
    model: str | None
    requests: list
    echoes: list          # (the prompt text, its first token's index) per choice; None: no echo
    prompt_tokens: int    # usage: the prompts' tokens, each prompt once
    stream: bool
    include_usage: bool
    logprobs: int | None


def completion(body: dict, tokenizer) -> Completion:
    """The engine's Requests for a /v1/completions body; a 400 naming the field for a bad one."""
    check_fields(body, COMPLETION_FIELDS, NEUTRAL)
    stop = body.get("stop")
    stop = [stop] if isinstance(stop, str) else stop
    if stop is not None and not (isinstance(stop, list) and all(isinstance(s, str) for s in stop)):
        raise HTTPError(400, "stop must be a string or a list of strings, "
                             f"got {json.dumps(body['stop'])}", "stop")
    for s in stop or ():
        check_text(s, "stop")
    items = prompts(body, tokenizer)
    n = field(body, "n", int, 1)
    if not 1 <= n or len(items) * n > MAX_CHOICES:
        raise HTTPError(400, f"n must be at least 1, and prompts x n at most {MAX_CHOICES}; got "
                             f"{len(items)} prompt(s) x {n}", "n")
    echo, logprobs = field(body, "echo", bool, False), field(body, "logprobs", int)
    seed = field(body, "seed", int, secrets.randbits(63))  # no seed: a fresh draw every time
    sampling = {"max_tokens": field(body, "max_tokens", int, 16),
                "temperature": field(body, "temperature", float, 1.0),
                "top_k": field(body, "top_k", int), "top_p": field(body, "top_p", float),
                "stop": tuple(stop or ()), "ignore_eos": field(body, "ignore_eos", bool, False),
                "logprobs": logprobs, "prompt_logprobs": echo and logprobs is not None}
    # choice j of a prompt draws with seed + j: n choices differ, and one seed gives them again
    requests = [Request(ids, seed=seed + j, **sampling) for ids, _, _ in items for j in range(n)]
    return Completion(field(body, "model", str), requests,
                      [(text, first) if echo else None for _, text, first in items
                       for _ in range(n)],
                      sum(len(ids) for ids, _, _ in items), field(body, "stream", bool, False),
                      stream_usage(body), logprobs)


def token_text(tokenizer, token: int) -> str:
    """A token as logprobs name it: its text, or "bytes:\\xe2\\x80" for part of a character."""
    raw = tokenizer.decode_bytes([token])
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{b:02x}" for b in raw)


class Choice:
    """One choice of a completion as its events arrive: its text, and (if asked) its logprobs in
    OpenAI's layout; begin(), add() and end() each return the choice's part of a streamed chunk."""

    def __init__(self, index: int, tokenizer, echo: tuple | None, logprobs: bool):
        self.index, self.tokenizer, self.echo = index, tokenizer, echo
        self.text, self.finish_reason = "", None
        self.logprobs = self.layout() if logprobs else None
        self.offset = 0  # characters of text before the next token's (text_offset)
        self.chars = codecs.getincrementaldecoder("utf-8")(errors="replace")

    @staticmethod
    def layout() -> dict:
        return {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}

    def entries(self, tokens, logprobs, text_of) -> dict | None:
        """logprobs for tokens (logprobs[i]: (log-probability, [(rival, its)]) or None), appended
        to the whole choice's; text_of(token) is the text the token adds."""
        if self.logprobs is None:
            return None
        part = self.layout()
        for token, lp in zip(tokens, logprobs):
            name = token_text(self.tokenizer, token)
            top = None
            if lp is not None:  # the chosen token is always among them (OpenAI: up to k + 1)
                top = {token_text(self.tokenizer, t): v for t, v in lp[1]}
                top.setdefault(name, lp[0])
            for key, value in zip(part, (name, None if lp is None else lp[0], top, self.offset)):
                part[key].append(value)
                self.logprobs[key].append(value)
            self.offset += len(text_of(token))
        return part

    def begin(self, seq) -> dict | None:
        """The echoed prompt, with its tokens' logprobs if asked: from the token after the
        <|endoftext|> put before a text prompt; a token-id prompt's first token has none."""
        if self.echo is None:
            return None
        text, first = self.echo
        prompt = seq.request.prompt
        scores = seq.prompt_logprobs or [None] * len(prompt)  # those of prompt[1:], if asked
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        part = self.entries(prompt[first:], [scores[i - 1] if i else None
                                             for i in range(first, len(prompt))],
                            lambda t: decoder.decode(self.tokenizer.decode_bytes([t])))
        self.text, self.offset = text, len(text)
        return {"index": self.index, "text": text, "logprobs": part, "finish_reason": None}

    def add(self, seq, token: int, piece: str, logprob) -> dict:
        """A new token and the text it made whole."""
        eos = token == self.tokenizer.eot_id and not seq.request.ignore_eos  # no text, as in emit()
        part = self.entries([token], [logprob], lambda t: "" if eos else self.chars.decode(
            self.tokenizer.decode_bytes([t])))
        self.text += piece
        return {"index": self.index, "text": piece, "logprobs": part, "finish_reason": None}

    def end(self, reason: str) -> dict:
        self.finish_reason = reason
        return {"index": self.index, "text": "", "logprobs": None, "finish_reason": reason}

    def whole(self) -> dict:
        return {"index": self.index, "text": self.text, "logprobs": self.logprobs,
                "finish_reason": self.finish_reason}


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def content_text(content, where: str) -> str:
    """A message's content: a string, or a list of text parts ({"type": "text", "text": ...})."""
    if isinstance(content, str):
        check_text(content, where)
        return content
    if isinstance(content, list) and all(isinstance(p, dict) for p in content):
        if any(p.get("type") != "text" for p in content):
            raise HTTPError(400, f"{where} may hold only text parts", where)
        return "".join(field(p, "text", str, required=True, where=f"{where}[{i}].")
                       for i, p in enumerate(content))
    raise HTTPError(400, f"{where} must be a string or a list of text parts", where)


@dataclass
class Chat:
    """A parsed /v1/chat/completions body: the question, and how to answer it."""
    model: str | None
    question: str
    sampling: dict  # Reader.submit's max_tokens, temperature, top_p, seed
    stream: bool
    include_usage: bool


def chat(body: dict) -> Chat:
    """The last user message is the question; the others (a system prompt too) are not read: the
    reader answers one question from the documents it retrieves for it."""
    check_fields(body, CHAT_FIELDS, CHAT_NEUTRAL)
    messages = field(body, "messages", list, required=True)
    question = None
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise HTTPError(400, f"messages[{i}] must be an object with role and content",
                            "messages")
        role = field(m, "role", str, required=True, where=f"messages[{i}].")
        if role == "user":
            question = content_text(m.get("content"), f"messages[{i}].content")
    if question is None or not question.strip():
        raise HTTPError(400, "messages has no user message with text: the last user message is "
                             "the question", "messages")
    limit = field(body, "max_completion_tokens", int, field(body, "max_tokens", int,
                                                             ANSWER_TOKENS))
    if not 1 <= limit <= ANSWER_TOKENS:
        raise HTTPError(400, f"max_tokens must be between 1 and {ANSWER_TOKENS}: the reader's "
                             "prompt leaves that much room for the answer", "max_tokens")
    sampling = {"max_tokens": limit, "temperature": field(body, "temperature", float, 0.0),
                "top_p": field(body, "top_p", float), "seed": field(body, "seed", int, 0)}
    return Chat(field(body, "model", str), question, sampling, field(body, "stream", bool, False),
                stream_usage(body))


def chat_message(rid, created, model, answer, reason, sources, use) -> dict:
    return {"id": rid, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer},
                         "logprobs": None, "finish_reason": reason}],
            "usage": use, "sources": sources}


def chat_chunk(rid, created, model, delta: dict | None, reason=None, **extra) -> dict:
    """One streamed chunk; delta None: the usage chunk, which has no choices."""
    choices = [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None,
                                         "finish_reason": reason}]
    return {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": choices, **extra}


def model_card(name: str, created: int, block_size: int, parent: str | None = None) -> dict:
    """/v1/models' entry, with vLLM's max_model_len and (for an adapter) parent."""
    card = {"id": name, "object": "model", "created": created, "owned_by": "nanolevels",
            "max_model_len": block_size}
    return card if parent is None else {**card, "parent": parent}

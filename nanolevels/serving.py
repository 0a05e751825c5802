"""The serving engine: many requests at once, continuous batching over one preallocated KV cache.

Decoding one token of one sequence leaves the machine mostly idle; one forward pass for 16 costs
little more. So the engine keeps a waiting queue and a running set, prefills a request into a free
cache slot, and decodes one token for every running sequence per step, each at its own position,
through the model's own attention. No paged memory: one slot (cache rows) per running sequence.
References: vLLM (arXiv 2309.06180), GeeeekExplorer/nano-vllm, karpathy/nanochat's engine.py.
"""

import bisect
import codecs
import queue
import random
import threading
import time
import traceback
from collections import Counter, defaultdict, deque
from dataclasses import dataclass

import torch

from nanolevels.model import GREEDY_BELOW, check_sampling, sampling_probs

POLICIES = ("continuous", "static", "one")  # bench/bench_serve.py compares them on one engine
MAX_LOGPROBS = 5  # rivals per token, as OpenAI's completions API allows
RATE_WINDOW_S = 10.0  # /stats reports tokens/s over this many recent seconds
# /metrics' histogram bounds in seconds: a tiny model's token takes milliseconds, a queue seconds
BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass
class Request:
    prompt: list[int]           # 1 to block_size token ids; a server starts them with <|endoftext|>
    max_tokens: int = 16        # the most new tokens; fewer if the block fills or a stop comes
    temperature: float = 1.0    # 0 is greedy (argmax); higher flattens the distribution
    top_k: int | None = None    # sample only from the k most likely tokens
    top_p: float | None = None  # sample from the smallest set of tokens whose mass reaches top_p
    stop: tuple = ()            # stop strings: the text ends right before the first one to appear
    ignore_eos: bool = False    # go on past <|endoftext|> (a benchmark's way to fix output lengths)
    seed: int = 0               # its own random numbers: batch mates never change its draws
    logprobs: int | None = None  # also each new token's log-probability and its k likeliest rivals'
    prompt_logprobs: bool = False  # also those of every prompt token after the first (echo)


class Stopped(Exception):
    """The engine is stopping (the server drains): it takes no new request."""


class Histogram:
    """Observations counted per bucket (the last one: above every bound), for /metrics."""

    def __init__(self, bounds=BUCKETS_S):
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, x: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, x)] += 1  # the first bound >= x
        self.sum += x

    def copy(self) -> "Histogram":
        h = Histogram(self.bounds)
        h.counts, h.sum = list(self.counts), self.sum
        return h


def check_request(r: Request, block_size: int) -> None:
    """A ValueError that says what is wrong with r, if anything (the HTTP layer makes it a 400)."""
    if not r.prompt:
        raise ValueError("the prompt has no tokens")
    if len(r.prompt) > block_size:
        raise ValueError(f"the prompt is {len(r.prompt)} tokens; the model reads at most "
                         f"{block_size}: shorten it")
    if not 0 <= r.max_tokens <= block_size:  # 0: only the prompt's log-probabilities (echo)
        raise ValueError(f"max_tokens must be between 0 and {block_size}, got {r.max_tokens}")
    check_sampling(r.temperature, r.top_k, r.top_p)
    if len(r.stop) > 4 or any(not s for s in r.stop):
        raise ValueError(f"stop must be at most 4 non-empty strings, got {list(r.stop)}")
    if r.logprobs is not None and not 0 <= r.logprobs <= MAX_LOGPROBS:
        raise ValueError(f"logprobs must be between 0 and {MAX_LOGPROBS}, got {r.logprobs}")


def held_back(text: str, stops) -> int:
    """How many characters at the end of text could be the start of a stop string: they wait for
    the next token before anyone sees them, so a stop string is never half sent."""
    return max((n for s in stops for n in range(min(len(s) - 1, len(text)), 0, -1)
                if text.endswith(s[:n])), default=0)


class Sequence:
    """One request in the engine: its slot and position, its random numbers, its queue of tokens."""

    def __init__(self, request: Request, out: queue.Queue | None = None):
        self.request = request
        self.rng = random.Random(request.seed)  # this request's own random numbers for sampling
        # a UTF-8 character split across tokens waits for its last byte
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.tokens: list[int] = []  # the new tokens so far
        self.text = ""               # their text, as far as it is decoded
        self.sent = 0                # characters of text already handed to the client
        self.slot = None             # the cache rows it owns while running
        self.length = 0              # tokens in the cache: the position the next fed token goes to
        self.finish_reason = None    # "stop", "length", "cancelled" or "error", once finished
        self.cancelled = False       # set when the client left; the engine acts at its next step
        self.prompt_logprobs = None  # [(log-probability, top)] of prompt[1:], set before any event
        self.arrived = time.perf_counter()  # for the time to the first token, and between tokens
        self.last = self.arrived
        # events (self, token, the text it made whole, logprob or None), at the end
        # (self, None, "", None); sequences may share one queue (the choices of one HTTP request)
        self.out = queue.Queue() if out is None else out

    def cancel(self) -> None:
        self.cancelled = True

    def stream(self):
        """Yield (token id, the text it made whole, logprob) as the engine makes them, to the end;
        logprob is (the token's log-probability, [(rival, its log-probability)]) or None."""
        while (event := self.out.get())[1] is not None:
            yield event[1:]


def next_tokens(seqs: list, logits) -> list[int]:
    """The next token of each sequence from its row of logits (len(seqs), V)."""
    tokens = logits.argmax(dim=-1).tolist()  # what greedy rows keep
    # sampled rows with the same settings share one sampling_probs() call, as generate() samples
    groups = defaultdict(list)  # (temperature, top_k, top_p) -> row indices
    for i, seq in enumerate(seqs):
        r = seq.request
        if r.temperature >= GREEDY_BELOW:
            groups[r.temperature, r.top_k, r.top_p].append(i)
    for (temperature, top_k, top_p), rows in groups.items():
        cdf = sampling_probs(logits[rows], temperature, top_k, top_p).cumsum(dim=-1)  # (n, V)
        # inverse transform sampling: the first token whose cumulative probability passes u, a
        # uniform number from the row's own generator, so its draws never depend on its batch mates
        u = torch.tensor([[seqs[i].rng.random()] for i in rows], dtype=cdf.dtype,
                         device=cdf.device)  # (n, 1)
        picks = torch.searchsorted(cdf, u * cdf[:, -1:], right=True)  # (n, 1)
        # u < 1, but u * total may round up to the total: then the last token
        for i, token in zip(rows, picks.clamp(max=cdf.size(1) - 1)[:, 0].tolist()):
            tokens[i] = token
    return tokens


def token_logprobs(logits, tokens: list[int], k: int) -> list[tuple]:
    """(log-probability of tokens[i], [(token, log-probability)] of the k likeliest) per row of
    logits (n, V): the model's own distribution, before temperature, top_k and top_p (as vLLM)."""
    logp = torch.log_softmax(logits.float(), dim=-1)  # (n, V)
    top = logp.topk(k, dim=-1)  # (n, k) values and indices
    chosen = logp.gather(1, torch.tensor(tokens, device=logp.device)[:, None])[:, 0].tolist()
    return [(lp, list(zip(ids, values)))
            for lp, ids, values in zip(chosen, top.indices.tolist(), top.values.tolist())]


class Engine:
    """Slots over one KV cache, a bounded waiting queue, and the step loop that serves them.

    submit() may be called from any thread; everything else of the engine's state belongs to the
    thread that runs step() (start() runs it in the background; tests may call step() by hand).
    """

    def __init__(self, model, tokenizer, slots: int = 16, policy: str = "continuous",
                 max_queue: int = 64, log=print):
        if policy not in POLICIES:
            raise ValueError(f"unknown policy {policy!r}; choose one of {', '.join(POLICIES)}")
        if slots < 1 or max_queue < 1:
            raise ValueError(f"slots and max_queue must be at least 1, got {slots} and {max_queue}")
        self.model = model.eval()  # no dropout while serving
        self.tokenizer = tokenizer
        self.policy = policy
        self.slots = slots
        self.device = model.lm_head.weight.device
        self.cache = model.new_cache(slots)  # k, v per layer: (slots, nh, block_size, hs)
        self.free = set(range(slots))
        self.running: list[Sequence] = []
        self.waiting = queue.Queue(max_queue)  # Sequences; full -> submit raises queue.Full
        self.log = log
        self.finished = Counter()   # finish reason -> requests
        self.tokens_out = 0         # new tokens since the start
        self.prompt_tokens = 0      # prompt tokens prefilled since the start
        self.recent = deque()       # (time, tokens) per step over the last RATE_WINDOW_S
        # seconds from submit() to the first token, between tokens, from submit() to the end
        self.ttft, self.tpot, self.e2e = Histogram(), Histogram(), Histogram()
        # guards what stats() and metrics() read from other threads, and submit() against stop()
        self.lock = threading.Lock()
        self.started = time.perf_counter()
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self.thread = None

    def submit(self, request: Request, out: queue.Queue | None = None) -> Sequence:
        """Queue a request; its Sequence streams the tokens (into out, if given). ValueError if the
        request is invalid, queue.Full if max_queue requests are waiting already, Stopped if the
        engine is stopping."""
        check_request(request, self.model.config.block_size)
        seq = Sequence(request, out)
        with self.lock:  # stop() sets stopping under it: a request is either refused or ended
            if self.stopping.is_set():
                raise Stopped("the server is shutting down")
            self.waiting.put_nowait(seq)
        self.wake.set()
        return seq

    def step(self) -> None:
        """Cancelled sequences leave, waiting ones are prefilled into free slots, then a decode."""
        for seq in [s for s in self.running if s.cancelled]:
            self.finish(seq, "cancelled")
        if self.policy == "continuous":
            room = len(self.free)  # refill every free slot: short requests never wait for long ones
        elif self.policy == "static":
            # a new batch only once the last one is done: free slots wait for its longest sequence
            room = 0 if self.running else len(self.free)
        else:
            room = 0 if self.running else 1  # "one": no batching, like litgpt serve
        before = self.tokens_out
        while room > 0:
            try:
                seq = self.waiting.get_nowait()
            except queue.Empty:
                break
            if seq.cancelled:
                self.finish(seq, "cancelled")
                continue
            self.prefill(seq)
            room -= 1
        if self.running:
            self.decode()
        self.count(self.tokens_out - before)

    @torch.no_grad()
    def prefill(self, seq: Sequence) -> None:
        """Write the prompt's keys and values into a free slot; sample the first new token."""
        seq.slot = min(self.free)  # the lowest, so that decode's rows 0..B-1 stay dense
        self.free.remove(seq.slot)
        self.running.append(seq)
        # the model writes the prompt's keys and values straight into the slot's rows (a view)
        view = self.cache.rows(seq.slot, seq.slot + 1)
        r = seq.request
        x = self.model.hidden_states(torch.tensor([r.prompt], device=self.device),
                                     cache=view)  # (1, T, C)
        if r.prompt_logprobs:  # every position's logits score the token after it
            logits = self.model.lm_head(x[0])  # (T, V)
            seq.prompt_logprobs = token_logprobs(logits[:-1], r.prompt[1:], r.logprobs or 0)
            logits = logits[-1:]
        else:
            logits = self.model.lm_head(x[:, -1])  # (1, V): only the last position's are needed
        seq.length = len(r.prompt)
        self.prompt_tokens += len(r.prompt)
        if r.max_tokens == 0:  # the prompt's log-probabilities were all it asked for
            self.finish(seq, "length")
            return
        token = next_tokens([seq], logits)[0]
        self.emit(seq, token, self.logprobs([seq], logits, [token])[0])

    @torch.no_grad()
    def decode(self) -> None:
        """One token for every running sequence in one forward pass of the model: slot i feeds its
        last token at its own position and attends to its own keys 0..pos[i] only."""
        # Rows of a slot past its sequence still hold an earlier request's keys: the mask never
        # lets them be read, and a position is always written (by the prefill, or the step that
        # feeds it) before a query may read it. A free slot among rows 0..B-1 computes a row
        # nobody reads (token 0 at position 0, which the next prefill of that slot overwrites).
        B = max(seq.slot for seq in self.running) + 1
        tokens, pos = [0] * B, [0] * B
        for seq in self.running:
            tokens[seq.slot], pos[seq.slot] = seq.tokens[-1], seq.length
        logits, _ = self.model(torch.tensor(tokens, device=self.device)[:, None],
                               cache=self.cache.rows(0, B),
                               positions=torch.tensor(pos, device=self.device))
        logits = logits[:, 0]  # (B, V)
        # emit() may finish some: they leave self.running
        batch = sorted(self.running, key=lambda seq: seq.slot)
        logits = logits[[seq.slot for seq in batch]]  # (len(batch), V)
        tokens = next_tokens(batch, logits)
        for seq, token, logprob in zip(batch, tokens, self.logprobs(batch, logits, tokens)):
            seq.length += 1
            self.emit(seq, token, logprob)

    @staticmethod
    def logprobs(seqs: list, logits, tokens: list[int]) -> list:
        """token_logprobs() for the sequences that asked for them, None for the others."""
        rows = [i for i, seq in enumerate(seqs) if seq.request.logprobs is not None]
        out = [None] * len(seqs)
        if rows:
            k = max(seqs[i].request.logprobs for i in rows)
            scores = token_logprobs(logits[rows], [tokens[i] for i in rows], k)
            for i, (lp, top) in zip(rows, scores):
                out[i] = (lp, top[:seqs[i].request.logprobs])
        return out

    def emit(self, seq: Sequence, token: int, logprob=None) -> None:
        """Hand a new token and the text it completes to the client; finish the sequence if done."""
        r = seq.request
        now = time.perf_counter()
        with self.lock:
            (self.tpot if seq.tokens else self.ttft).observe(now - seq.last)
        seq.last = now
        seq.tokens.append(token)
        self.tokens_out += 1
        eos = token == self.tokenizer.eot_id and not r.ignore_eos
        if not eos:
            seq.text += seq.decoder.decode(self.tokenizer.decode_bytes([token]))
        # the earliest stop string in the text; text before seq.sent was checked by earlier tokens
        cut = min((i for s in r.stop if (i := seq.text.find(s, seq.sent)) >= 0), default=None)
        if cut is not None:
            reason, end = "stop", cut
        elif eos:
            reason, end = "stop", len(seq.text)
        # the token just sampled cannot be fed once the cache holds block_size tokens
        elif len(seq.tokens) == r.max_tokens or seq.length == self.model.config.block_size:
            seq.text += seq.decoder.decode(b"", final=True)  # an unfinished character: U+FFFD
            reason, end = "length", len(seq.text)
        else:  # text that may begin a stop string waits to see whether it does
            reason, end = None, len(seq.text) - held_back(seq.text, r.stop)
        seq.out.put((seq, token, seq.text[seq.sent:end], logprob))
        seq.sent = end
        if reason is not None:
            seq.text = seq.text[:end]
            self.finish(seq, reason)

    def finish(self, seq: Sequence, reason: str) -> None:
        """The sequence is done: free its slot and tell the client."""
        seq.finish_reason = reason
        if seq.slot is not None:
            self.running.remove(seq)
            self.free.add(seq.slot)
            seq.slot = None
        with self.lock:
            self.finished[reason] += 1
            self.e2e.observe(time.perf_counter() - seq.arrived)
        seq.out.put((seq, None, "", None))

    def count(self, new_tokens: int) -> None:
        """Remember this step's new tokens for the tokens/s of stats()."""
        now = time.perf_counter()
        with self.lock:
            if new_tokens:
                self.recent.append((now, new_tokens))
            while self.recent and self.recent[0][0] < now - RATE_WINDOW_S:
                self.recent.popleft()

    def stats(self) -> dict:
        """What /stats shows: load, tokens/s over the last RATE_WINDOW_S, finished requests."""
        now = time.perf_counter()
        with self.lock:
            recent = sum(n for t, n in self.recent if t >= now - RATE_WINDOW_S)
            finished = dict(self.finished)
        return {"policy": self.policy, "slots": self.slots, "running": len(self.running),
                "waiting": self.waiting.qsize(),
                "tokens_per_s": round(recent / min(RATE_WINDOW_S, now - self.started), 1),
                "tokens": self.tokens_out, "finished": finished,
                "cache_mb": round(self.cache.nbytes / 2**20, 1)}

    def metrics(self) -> dict:
        """What /metrics shows: load and counters now, and copies of the latency histograms."""
        with self.lock:
            return {"running": len(self.running), "waiting": self.waiting.qsize(),
                    "slots": self.slots, "prompt_tokens": self.prompt_tokens,
                    "generation_tokens": self.tokens_out, "finished": dict(self.finished),
                    "ttft": self.ttft.copy(), "tpot": self.tpot.copy(), "e2e": self.e2e.copy()}

    def loop(self) -> None:
        """Step while there is work; sleep until submit() wakes it when there is none."""
        while not self.stopping.is_set():
            if not self.running and self.waiting.empty():
                self.wake.clear()  # then look again: a submit() in between sets it, wait returns
                if self.waiting.empty():
                    self.wake.wait(0.5)
                continue
            try:
                self.step()
            except Exception:  # a bug, not a user's mistake: fail the running requests, serve on
                self.log(f"engine step failed, ending {len(self.running)} running request(s):\n"
                         f"{traceback.format_exc()}")
                for seq in list(self.running):
                    self.finish(seq, "error")

    def start(self) -> "Engine":
        self.thread = threading.Thread(target=self.loop, name="engine", daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        """Stop the loop; every request still running or waiting ends as cancelled."""
        with self.lock:
            self.stopping.set()
        self.wake.set()
        if self.thread is not None:
            self.thread.join()
        for seq in list(self.running):
            self.finish(seq, "cancelled")
        while not self.waiting.empty():
            self.finish(self.waiting.get_nowait(), "cancelled")

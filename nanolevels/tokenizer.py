"""Byte-level BPE tokenizer: we learn the merges from our own text, tiktoken applies them fast.

Training starts from the 256 bytes (nothing is ever "unknown"), splits the text into chunks with
the GPT-4 regex and merges the most frequent adjacent pair into a new token (256, 257, ...) until
the vocabulary is full; encoding replays the merges in order. tiktoken is only the engine that runs
our ranks: encode_reference does the same in slow plain Python, and the tests hold them equal.
References: karpathy/minbpe; openai/tiktoken; GPT-2 (Radford et al. 2019) for byte-level BPE.
"""

import json
import os
from collections import Counter, defaultdict

import regex
import tiktoken

from nanolevels.files import atomic_write

# GPT-4 (cl100k) split: contractions, letters (with one leading non-letter such as a space), 1-3
# digits, punctuation runs, newlines, other whitespace. Merges never cross a chunk boundary, so no
# vocabulary goes to "dog." vs "dog!", and a token is never half a word plus half of the next one.
SPLIT_PATTERN = (r"'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+")
EOT = "<|endoftext|>"
NEVER = float("inf")  # the rank of a pair that was never merged


def merge(ids, pair, idx):
    """Replace every occurrence of `pair` in `ids` (left to right) by the new token `idx`."""
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and ids[i] == pair[0] and ids[i + 1] == pair[1]:
            out.append(idx)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def special_split(text, specials):
    """Split text around special tokens, keeping them: "a<|x|>b" -> ["a", "<|x|>", "b"]."""
    if not specials:
        return [text]
    # longest first, so a special token that contains another one wins
    return regex.split("(" + "|".join(regex.escape(s) for s in
                                      sorted(specials, key=len, reverse=True)) + ")", text)


class Tokenizer:
    """A BPE vocabulary (merges + special tokens) and the tiktoken encoding that runs it."""

    def __init__(self, merges, special_tokens=None, pattern=SPLIT_PATTERN, name="nanolevels"):
        self.merges = [tuple(pair) for pair in merges]
        # token 256 + i is merge i, its bytes the two merged tokens' bytes. tiktoken merges, at each
        # step, the adjacent pair whose bytes have the lowest rank: for learned merges, the same as
        # replaying them in order
        vocab = {i: bytes([i]) for i in range(256)}
        for i, (a, b) in enumerate(self.merges):
            vocab[256 + i] = vocab[a] + vocab[b]
        ranks = {token: i for i, token in vocab.items()}
        if len(ranks) != len(vocab):
            # tiktoken looks tokens up by their bytes: two ids with the same bytes can't both exist
            seen = {}
            for i, token in vocab.items():
                if token in seen:
                    raise ValueError(f"merges {seen[token]} and {i} both produce {token!r}")
                seen[token] = i
        if special_tokens is None:
            special_tokens = {EOT: len(vocab)}
        if any(i < len(vocab) for i in special_tokens.values()):
            raise ValueError(f"special token ids must be >= {len(vocab)} "
                             "(the merges use the ids below)")
        enc = tiktoken.Encoding(name=name, pat_str=pattern, mergeable_ranks=ranks,
                                special_tokens=special_tokens)
        self._setup(enc, ranks, special_tokens, pattern)

    def _setup(self, enc, ranks, special_tokens, pattern):
        self.enc = enc
        self.pattern = pattern
        self.special_tokens = dict(special_tokens)
        self.ranks = ranks              # bytes -> id, what tiktoken runs (special tokens excluded)
        self.vocab = {i: token for token, i in ranks.items()}
        self.vocab.update({i: s.encode("utf-8") for s, i in self.special_tokens.items()})

    @classmethod
    def train(cls, text, vocab_size, special_tokens=(EOT,), pattern=SPLIT_PATTERN, verbose=False):
        """Learn vocab_size - 256 - len(special_tokens) merges from text; fewer if the text runs out
        of pairs first (a tiny corpus): check `tok.vocab_size`."""
        special_tokens = list(special_tokens)
        num_merges = vocab_size - 256 - len(special_tokens)
        if num_merges < 0:
            raise ValueError(f"vocab_size={vocab_size} is too small: it must be at least "
                             f"256 bytes + {len(special_tokens)} special tokens = "
                             f"{256 + len(special_tokens)}")
        # special tokens (e.g. the document separator) are not text: never learn merges across them.
        # Most chunks repeat ("the" thousands of times): count each distinct chunk once, with its
        # frequency, and a pair found in it counts that many times
        counts = Counter()
        for part in special_split(text, special_tokens):
            if part not in special_tokens:
                counts.update(regex.findall(pattern, part))
        chunks = [list(chunk.encode("utf-8")) for chunk in counts]
        freqs = list(counts.values())

        stats = Counter()               # pair -> how often it occurs, weighted by chunk frequency
        where = defaultdict(set)        # pair -> indices of the chunks that contain it
        for i, ids in enumerate(chunks):
            for pair in zip(ids, ids[1:]):
                stats[pair] += freqs[i]
                where[pair].add(i)

        merges = []
        for k in range(num_merges):
            if not stats:
                break
            # most frequent pair; on a tie the smallest, so every machine learns the same merges
            top = max(stats.values())
            pair = min(p for p, count in stats.items() if count == top)
            idx = 256 + k
            for i in where.pop(pair):  # only these chunks change: no recount of the corpus
                ids, n = chunks[i], freqs[i]
                new = merge(ids, pair, idx)
                # take the chunk's old pairs out of the counts and put its new pairs in
                for p in zip(ids, ids[1:]):
                    stats[p] -= n
                    if stats[p] == 0:
                        del stats[p]
                for p in zip(new, new[1:]):
                    stats[p] += n
                    where[p].add(i)
                # pairs the merge destroyed no longer point at this chunk (`pair` left the index)
                for p in set(zip(ids, ids[1:])) - set(zip(new, new[1:])) - {pair}:
                    where[p].discard(i)
                chunks[i] = new
            merges.append(pair)
            if verbose and (k < 10 or k % 100 == 0):
                print(f"merge {k + 1}/{num_merges}: {pair} -> {idx} ({top} occurrences)")
        specials = {s: 256 + len(merges) + j for j, s in enumerate(special_tokens)}
        return cls(merges, specials, pattern)

    def encode(self, text, allowed_special=()):
        """Text -> ids. Special tokens in text are plain text unless allowed ("all" allows all)."""
        if allowed_special != "all":
            allowed_special = set(allowed_special)
        return self.enc.encode(text, allowed_special=allowed_special, disallowed_special=())

    def encode_reference(self, text, allowed_special=()):
        """Same ids as encode, in slow plain Python, to show (and test) what tiktoken does."""
        allowed = set(self.special_tokens)
        if allowed_special != "all":
            allowed &= set(allowed_special)
        ids = []
        for part in special_split(text, allowed):
            if part in allowed:
                ids.append(self.special_tokens[part])
                continue
            for chunk in regex.findall(self.pattern, part):
                parts = [bytes([b]) for b in chunk.encode("utf-8")]
                while len(parts) >= 2:
                    # merge the adjacent pair whose bytes have the lowest rank (leftmost on a tie)
                    candidates = [(self.ranks.get(a + b, NEVER), i)
                                  for i, (a, b) in enumerate(zip(parts, parts[1:]))]
                    rank, i = min(candidates)
                    if rank == NEVER:
                        break
                    parts[i:i + 2] = [parts[i] + parts[i + 1]]
                ids.extend(self.ranks[p] for p in parts)
        return ids

    def decode(self, ids):
        # a cut in the middle of a multi-byte character decodes to U+FFFD instead of failing
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def decode_bytes(self, ids):
        return b"".join(self.vocab[i] for i in ids)

    @property
    def vocab_size(self):
        return max(self.vocab) + 1

    @property
    def eot_id(self):
        return self.special_tokens[EOT]

    def to_dict(self):
        if self.merges is None:
            return {"kind": "gpt2"}
        return {"kind": "bpe", "pattern": self.pattern, "merges": [list(p) for p in self.merges],
                "special_tokens": self.special_tokens}

    @classmethod
    def from_dict(cls, d):
        if d.get("kind") == "gpt2":
            return cls.gpt2()
        if d.get("kind") != "bpe":
            raise ValueError(f"unknown tokenizer kind {d.get('kind')!r} (expected 'bpe' or 'gpt2')")
        return cls(d["merges"], d["special_tokens"], d["pattern"])

    def save(self, path):
        d = self.to_dict()
        # one merge per line, so the file reads (and diffs) like a list
        lines = [f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in d.items() if k != "merges"]
        if "merges" in d:
            lines.append('  "merges": [' + ",".join(f"\n    {json.dumps(m)}" for m in d["merges"])
                         + "\n  ]")
        atomic_write(path, "{\n" + ",\n".join(lines) + "\n}\n")

    @classmethod
    def load(cls, path):
        if not os.path.exists(path):
            raise ValueError(f"no tokenizer at {path}: train one first, "
                             "or pass the path of an existing tokenizer.json")
        try:
            with open(path, encoding="utf-8") as f:
                return cls.from_dict(json.load(f))
        except (ValueError, KeyError, TypeError, IndexError, AttributeError) as e:
            raise ValueError(f"{path} is not a valid tokenizer file ({type(e).__name__}: {e}); "
                             "delete it and train again") from None

    @classmethod
    def gpt2(cls):
        """OpenAI's GPT-2 tokenizer (50257 tokens), downloaded by tiktoken on first use."""
        try:
            enc = tiktoken.get_encoding("gpt2")
        except Exception as e:
            reason = (str(e).splitlines() or [""])[0]
            raise ConnectionError(f"could not download the GPT-2 tokenizer (no network?): "
                               f"{type(e).__name__}: {reason}") from None
        tok = cls.__new__(cls)
        tok.merges = None
        # tiktoken's README reads these attributes to extend an encoding; we read them to wrap one
        tok._setup(enc, enc._mergeable_ranks, enc._special_tokens, enc._pat_str)
        return tok

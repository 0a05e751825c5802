"""Byte-level BPE tokenizer: we learn the merges from our own text, tiktoken applies them fast.

Training starts from the 256 bytes (nothing is ever "unknown"), splits the text into chunks with
the GPT-4 regex and merges the most frequent adjacent pair into a new token (256, 257, ...) until
the vocabulary is full; encoding replays the merges in order. tiktoken is only the engine that runs
our ranks: encode_reference does the same in slow plain Python, and the tests hold them equal.
References: karpathy/minbpe; openai/tiktoken; GPT-2 (Radford et al. 2019) for byte-level BPE.
"""

import base64
import binascii
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
# GPT-2's split, which Hugging Face's ByteLevel pre-tokenizer applies when its use_regex is on
GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"


def byte_chars() -> dict:
    """GPT-2's map of the 256 bytes to printable characters (bytes_to_unicode in its encoder.py):
    Hugging Face's vocab.json and tokenizer.json spell tokens in these, e.g. a space as 'Ġ'."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    unprintable = [b for b in range(256) if b not in printable]
    return {b: chr(b) for b in printable} | {b: chr(256 + n) for n, b in enumerate(unprintable)}


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
        """Learn vocab_size - 256 - len(special_tokens) merges from text (a string, or strings to
        read one at a time: a corpus too big to hold); fewer if the text runs out of pairs first
        (a tiny corpus): check `tok.vocab_size`."""
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
        for piece in [text] if isinstance(text, str) else text:
            for part in special_split(piece, special_tokens):
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
        if self.merges is None:  # GPT-2's: ids are not bytes then merges, so store each token
            if sorted(self.ranks.values()) != list(range(len(self.ranks))):
                raise ValueError("the tokenizer's ids have gaps; only gap-free ranks can be saved")
            tokens = sorted(self.ranks, key=self.ranks.get)
            return {"kind": "ranks", "pattern": self.pattern, "special_tokens": self.special_tokens,
                    "tokens": [base64.b64encode(t).decode("ascii") for t in tokens]}
        return {"kind": "bpe", "pattern": self.pattern, "merges": [list(p) for p in self.merges],
                "special_tokens": self.special_tokens}

    @classmethod
    def from_dict(cls, d):
        """The inverse of to_dict; anything else is a ValueError that says what is wrong."""
        kind = d.get("kind") if isinstance(d, dict) else None
        if kind == "gpt2":  # files of before the tokens were stored: never fetch one silently
            raise ValueError("the tokenizer is named 'gpt2' but not stored; load the model with "
                             "Tokenizer.gpt2() (it downloads) and save it again to store it")
        if kind not in ("bpe", "ranks"):
            raise ValueError(f"unknown tokenizer kind {kind!r} (expected 'bpe' or 'ranks')")
        try:
            if kind == "ranks":
                ranks = {base64.b64decode(t, validate=True): i for i, t in enumerate(d["tokens"])}
                return cls.from_ranks(ranks, d["special_tokens"], d["pattern"])
            return cls(d["merges"], d["special_tokens"], d["pattern"])
        except (KeyError, TypeError, IndexError, AttributeError, binascii.Error) as e:
            raise ValueError(f"{type(e).__name__}: {e}") from None

    @classmethod
    def from_ranks(cls, ranks, special_tokens, pattern, name="nanolevels"):
        """A tokenizer from tiktoken's ranks ({token bytes: id}) alone, without merges (GPT-2's)."""
        tok = cls.__new__(cls)
        tok.merges = None
        enc = tiktoken.Encoding(name=name, pat_str=pattern, mergeable_ranks=ranks,
                                special_tokens=special_tokens)
        tok._setup(enc, ranks, special_tokens, pattern)
        return tok

    def to_hf(self) -> dict:
        """This tokenizer as Hugging Face's tokenizer.json (the `tokenizers` library that
        transformers runs): our split pattern, then GPT-2's byte map, then the merges in order."""
        if self.merges is None:
            raise ValueError("only a tokenizer with merges (one trained here) has a tokenizer.json")
        chars = byte_chars()
        spelled = {i: "".join(chars[b] for b in token) for token, i in self.ranks.items()}
        byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
                      "use_regex": False}  # our Split has already cut the text into chunks
        specials = [{"id": i, "content": s, "single_word": False, "lstrip": False, "rstrip": False,
                     "normalized": False, "special": True}
                    for s, i in sorted(self.special_tokens.items(), key=lambda item: item[1])]
        return {"version": "1.0", "truncation": None, "padding": None, "added_tokens": specials,
                "normalizer": None,
                "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                    {"type": "Split", "pattern": {"Regex": self.pattern}, "behavior": "Isolated",
                     "invert": False}, byte_level]},
                "post_processor": None, "decoder": byte_level,
                "model": {"type": "BPE", "dropout": None, "unk_token": None,
                          "continuing_subword_prefix": None, "end_of_word_suffix": None,
                          "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                          "vocab": {token: i for i, token in sorted(spelled.items())},
                          "merges": [f"{spelled[a]} {spelled[b]}" for a, b in self.merges]}}

    @classmethod
    def from_hf(cls, d):
        """The inverse of to_hf, and GPT-2's own tokenizer.json: a byte-level BPE whose split is a
        Split regex (ours) or ByteLevel's own (GPT-2's). Anything else is a ValueError."""
        try:
            steps = d["pre_tokenizer"]
            steps = steps["pretokenizers"] if steps["type"] == "Sequence" else [steps]
            kinds = [(step["type"], step.get("use_regex")) for step in steps]
            if kinds == [("Split", None), ("ByteLevel", False)]:
                pattern = steps[0]["pattern"]["Regex"]
            elif kinds == [("ByteLevel", True)]:
                pattern = GPT2_PATTERN
            else:
                raise ValueError(f"a pre-tokenizer {kinds} is not byte-level BPE's")
            if d["model"]["type"] != "BPE":
                raise ValueError(f"a {d['model']['type']} model is not BPE")
            byte = {c: b for b, c in byte_chars().items()}
            ranks = {bytes(byte[c] for c in token): i for token, i in d["model"]["vocab"].items()}
            specials = {t["content"]: t["id"] for t in d["added_tokens"]}
            merges = [m.split(" ") if isinstance(m, str) else m for m in d["model"]["merges"]]
            merges = [(d["model"]["vocab"][a], d["model"]["vocab"][b]) for a, b in merges]
        except (KeyError, TypeError, IndexError, AttributeError) as e:
            raise ValueError(f"not a tokenizer.json ({type(e).__name__}: {e})") from None
        ours = cls(merges, specials, pattern) if all(ranks.get(bytes([b])) == b
                                                     for b in range(256)) else None
        if ours is not None and ours.ranks == ranks:
            return ours  # ids are bytes, then one per merge in order: our own layout
        return cls.from_ranks(ranks, specials, pattern)  # GPT-2's ids: tiktoken runs them as ranks

    def save(self, path):
        d = self.to_dict()
        # one merge (or token) per line, so the file reads (and diffs) like a list
        lines = [f"  {json.dumps(k)}: " + ("[" + ",".join(f"\n    {json.dumps(m)}" for m in v)
                                            + "\n  ]" if isinstance(v, list) else json.dumps(v))
                 for k, v in d.items()]
        atomic_write(path, "{\n" + ",\n".join(lines) + "\n}\n")

    @classmethod
    def load(cls, path):
        if not os.path.exists(path):
            raise ValueError(f"no tokenizer at {path}: train one first, "
                             "or pass the path of an existing tokenizer.json")
        try:
            with open(path, encoding="utf-8") as f:
                d = json.load(f)
            # Hugging Face's tokenizer.json has a "model"; ours (to_dict) a "kind"
            return cls.from_hf(d) if isinstance(d, dict) and "model" in d else cls.from_dict(d)
        except ValueError as e:
            raise ValueError(f"{path} is not a valid tokenizer file ({e}); "
                             "delete it and train again") from None

    @classmethod
    def gpt2(cls):
        """OpenAI's GPT-2 tokenizer (50257 tokens), downloaded by tiktoken on first use; to_dict
        stores its tokens, so a checkpoint that holds it loads without the network."""
        try:
            enc = tiktoken.get_encoding("gpt2")
        except Exception as e:
            reason = (str(e).splitlines() or [""])[0]
            raise ConnectionError(f"could not download the GPT-2 tokenizer (no network?): "
                               f"{type(e).__name__}: {reason}") from None
        # tiktoken's README reads these attributes to extend an encoding; we read them to copy one
        return cls.from_ranks(enc._mergeable_ranks, enc._special_tokens, enc._pat_str, enc.name)

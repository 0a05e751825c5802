"""Tests for nanolevels/tokenizer.py: BPE training, tiktoken vs the reference encoder, round trips, files, errors."""

import json
import random
from collections import Counter

import pytest
import regex
import tiktoken

from nanolevels.tokenizer import EOT, GPT2_PATTERN, SPLIT_PATTERN, Tokenizer, byte_chars, merge


def biographies(num_sentences, seed=0):
    rng = random.Random(seed)
    names = ["Alice Berg", "Bruno Castillo", "Chiara Duval", "Dmitri Eriksen", "Elena Fontaine", "Farid Okafor",
             "Greta Hartmann", "Hugo Nakamura", "Ines Petrov", "Jonas Quinn", "Keiko Rossi", "Lars Moreau"]
    cities = ["Lisbon", "Oslo", "Krakow", "Lyon", "Osaka", "Nairobi", "Porto", "Tampere", "Graz", "Quito"]
    jobs = ["baker", "engineer", "violinist", "botanist", "nurse", "carpenter", "teacher"]
    templates = ["{n} was born in {c} in {y}.", "{n} worked as a {j} in {c} for {k} years.",
                 "In {y}, {n} moved to {c}, where she met {m}.", "{n}'s favourite number was {k}{k}."]
    sentences = [rng.choice(templates).format(n=rng.choice(names), m=rng.choice(names), c=rng.choice(cities),
                                              j=rng.choice(jobs), y=rng.randint(1900, 2000), k=rng.randint(1, 99))
                 for _ in range(num_sentences)]
    return " ".join(sentences)


def random_text(rng, length):
    """Runs of random code points from awkward places: controls, combining marks, CJK, emoji, odd spaces."""
    ranges = [(0x20, 0x7E), (0x00, 0x1F), (0x7F, 0xFF), (0x300, 0x36F), (0x600, 0x6FF), (0x4E00, 0x9FFF),
              (0xAC00, 0xD7A3), (0x1F300, 0x1FAFF), (0xE000, 0xE0FF), (0x10000, 0x10FFFF)]
    spaces = " \t\n\r\u00a0\u2003\u3000\u200b\u2028"
    out = []
    while len(out) < length:
        if rng.random() < 0.2:
            out.extend(rng.choice(spaces) for _ in range(rng.randint(1, 4)))  # whitespace runs
        else:
            lo, hi = rng.choice(ranges)  # no surrogates (D800-DFFF): they are not valid in UTF-8
            out.extend(chr(rng.randint(lo, hi)) for _ in range(rng.randint(1, 6)))
    return "".join(out[:length])


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.train(biographies(400), vocab_size=512)


@pytest.fixture(scope="module")
def unicode_tok():
    # trained on random unicode, so its merges join the bytes of multi-byte characters
    return Tokenizer.train(random_text(random.Random(1), 20_000), vocab_size=400)


def test_wikipedia_example():
    # "aaabdaaabac": aa occurs 4 times -> 256. Then (256, a) and (a, b) both occur twice:
    # the tie goes to the smaller pair (97, 98) = "ab" -> 257. Then (256, 257) = "aaab" -> 258.
    tok = Tokenizer.train("aaabdaaabac", vocab_size=256 + 3 + 1)
    assert tok.merges == [(97, 97), (97, 98), (256, 257)]
    assert [tok.vocab[i] for i in (256, 257, 258)] == [b"aa", b"ab", b"aaab"]
    assert tok.encode("aaabdaaabac") == [258, ord("d"), 258, ord("a"), ord("c")]  # "XdXac"
    assert tok.eot_id == 259 and tok.vocab_size == 260
    assert Tokenizer.train("aaabdaaabac", vocab_size=259, special_tokens=()).merges == tok.merges


def test_incremental_training_matches_naive_recount(tok):
    # the slow obvious trainer: recount every pair of every chunk before each merge
    chunks = [list(c.encode("utf-8")) for c in regex.findall(SPLIT_PATTERN, biographies(400))]
    merges = []
    for k in range(len(tok.merges)):
        stats = Counter(p for ids in chunks for p in zip(ids, ids[1:]))
        top = max(stats.values())
        pair = min(p for p, count in stats.items() if count == top)
        chunks = [merge(ids, pair, 256 + k) for ids in chunks]
        merges.append(pair)
    assert tok.merges == merges
    assert len(merges) == 512 - 256 - 1


def test_encode_matches_reference_on_biographies(tok):
    for text in (biographies(400), biographies(200, seed=7)):
        assert tok.encode(text) == tok.encode_reference(text)


@pytest.mark.parametrize("seed", range(20))
def test_encode_matches_reference_on_random_unicode(tok, unicode_tok, seed):
    text = random_text(random.Random(seed), 300)
    for t in (tok, unicode_tok):
        assert t.encode(text) == t.encode_reference(text)


@pytest.mark.parametrize("text", [
    "",
    "Alice Berg was born in Lisbon in 1901.",
    "👋🏽 family: 👨‍👩‍👧 🇵🇹",
    "你好，世界。東京は晴れ。",
    "\x00\x01\x1b[31mred\x1b[0m\x7f\r\n\t\x0b\x0c",
    "  leading, trailing  \n\n\n  mixed: é (e + \u0301), 100000 digits, it's 'quoted', 日本 🍣\u200b",
])
def test_round_trip(tok, unicode_tok, text):
    for t in (tok, unicode_tok):
        assert t.decode(t.encode(text)) == text
        assert t.decode_bytes(t.encode(text)) == text.encode("utf-8")


def test_round_trip_random(tok, unicode_tok):
    rng = random.Random(123)
    for _ in range(50):
        text = random_text(rng, rng.randint(0, 200))
        assert tok.decode(tok.encode(text)) == text
        assert unicode_tok.decode(unicode_tok.encode(text)) == text


def test_decode_partial_utf8(tok):
    # "é" is the two bytes C3 A9: half of it is not text, and decode must not crash
    assert tok.decode([0xC3]) == "\ufffd"
    assert tok.decode([0xC3, 0xA9]) == "é"


def test_special_token_is_plain_text_unless_allowed(tok):
    text = f"Alice was born.{EOT}Bruno was born."
    ids = tok.encode(text)
    assert tok.eot_id not in ids
    assert tok.decode(ids) == text
    assert tok.encode_reference(text) == ids
    for allowed in ("all", {EOT}):
        ids = tok.encode(text, allowed_special=allowed)
        assert ids.count(tok.eot_id) == 1
        assert tok.decode(ids) == text
        assert tok.encode_reference(text, allowed_special=allowed) == ids


def test_save_load_and_dict_round_trip(tok, tmp_path):
    path = tmp_path / "tokenizer.json"
    tok.save(path)
    assert json.loads(path.read_text()) == tok.to_dict()
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind
    text = biographies(50, seed=3) + EOT + "日本 🍣"
    for t in (Tokenizer.load(path), Tokenizer.from_dict(json.loads(json.dumps(tok.to_dict())))):
        assert t.merges == tok.merges and t.special_tokens == tok.special_tokens
        assert t.encode(text, allowed_special="all") == tok.encode(text, allowed_special="all")


def test_load_missing_or_corrupt_file(tmp_path):
    with pytest.raises(ValueError, match="no tokenizer at") as e:
        Tokenizer.load(tmp_path / "missing.json")
    assert "\n" not in str(e.value)
    for content in ("{not json", '{"kind": "bpe"}', '{"kind": "sentencepiece"}', "[1, 2]", '{"kind": "bpe", '
                    '"pattern": "", "merges": [[97, 999]], "special_tokens": {}}'):
        path = tmp_path / "bad.json"
        path.write_text(content)
        with pytest.raises(ValueError, match="not a valid tokenizer file") as e:
            Tokenizer.load(path)
        assert "\n" not in str(e.value)


def test_vocab_size_too_small():
    with pytest.raises(ValueError, match="at least"):
        Tokenizer.train("hello world", vocab_size=256)
    assert Tokenizer.train("hello world", vocab_size=257).merges == []


def test_tiny_corpus_stops_early():
    tok = Tokenizer.train("ab ab", vocab_size=1000)
    assert tok.merges == [(97, 98), (32, 256)]  # "ab", then " ab"; no pair left after that
    assert tok.vocab_size == 259 and tok.eot_id == 258
    assert tok.decode(tok.encode("ab ba")) == "ab ba"


def test_merge_collision():
    # "abc" made twice: as ab + c and as a + bc
    with pytest.raises(ValueError, match="both produce b'abc'"):
        Tokenizer([(97, 98), (256, 99), (98, 99), (97, 258)])


def test_gpt2_offline(monkeypatch):
    def offline(name):
        raise ConnectionError("HTTPSConnectionPool: Max retries exceeded\nwith a long traceback")
    monkeypatch.setattr(tiktoken, "get_encoding", offline)
    with pytest.raises(ConnectionError) as e:  # an OSError: cli.run prints it as one line
        Tokenizer.gpt2()
    assert str(e.value).startswith("could not download the GPT-2 tokenizer (no network?): ConnectionError")
    assert "\n" not in str(e.value)


def test_gpt2_wraps_a_tiktoken_encoding(tok, monkeypatch):
    # no network: hand gpt2() a local tiktoken encoding in place of the downloaded one
    monkeypatch.setattr(tiktoken, "get_encoding", lambda name: tok.enc)
    g = Tokenizer.gpt2()
    text = f"{biographies(20)}{EOT}日本"
    assert g.encode(text, "all") == g.encode_reference(text, "all") == tok.encode(text, "all")
    assert g.decode(g.encode(text)) == text
    # its tokens travel in to_dict (a checkpoint's metadata): read back, it needs no network
    d = json.loads(json.dumps(g.to_dict()))
    assert d["kind"] == "ranks" and len(d["tokens"]) == len(tok.ranks)

    def offline(name):
        raise AssertionError("from_dict went to the network")
    monkeypatch.setattr(tiktoken, "get_encoding", offline)
    g2 = Tokenizer.from_dict(d)
    assert g2.encode(text, "all") == g.encode(text, "all") and g2.eot_id == tok.eot_id


def test_a_bare_gpt2_kind_is_refused_not_fetched(monkeypatch):
    def offline(name):
        raise AssertionError("from_dict went to the network")
    monkeypatch.setattr(tiktoken, "get_encoding", offline)
    with pytest.raises(ValueError, match="not stored"):
        Tokenizer.from_dict({"kind": "gpt2"})


@pytest.mark.parametrize("d", [{"kind": "bpe"}, {"kind": "bpe", "merges": 3, "pattern": "x",
                                                 "special_tokens": {}},
                               {"kind": "ranks", "tokens": ["@@"], "pattern": "x",
                                "special_tokens": {}}, [1, 2], {"kind": "sentencepiece"}])
def test_from_dict_raises_value_errors_only(d):
    with pytest.raises(ValueError):
        Tokenizer.from_dict(d)


# ---- Hugging Face's tokenizer.json ----

def test_byte_chars_is_gpt2s_map():
    chars = byte_chars()
    assert len(set(chars.values())) == 256
    assert (chars[ord(" ")], chars[ord("\n")], chars[ord("A")], chars[0xFF]) == ("Ġ", "Ċ", "A", "ÿ")


def test_hf_round_trip(tok, tmp_path):
    d = json.loads(json.dumps(tok.to_hf()))
    assert d["model"]["vocab"]["Ġ"] == ord(" ") and len(d["model"]["merges"]) == len(tok.merges)
    back = Tokenizer.from_hf(d)
    assert back.merges == tok.merges and back.special_tokens == tok.special_tokens
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(d))
    text = biographies(30, seed=4) + EOT + "日本 🍣\n\n  x"
    assert Tokenizer.load(path).encode(text, "all") == tok.encode(text, "all")
    path.write_text(json.dumps(d | {"pre_tokenizer": {"type": "Whitespace"}}))
    with pytest.raises(ValueError, match="not a valid tokenizer file"):
        Tokenizer.load(path)


def gpt2_layout(tok):
    """tok's vocabulary laid out as GPT-2's tokenizer.json is: ByteLevel with its own regex, and
    the 256 bytes numbered in the byte map's order, not by value."""
    chars = byte_chars()
    order = sorted(range(256), key=lambda b: ord(chars[b]))  # "!" first, as in GPT-2's vocab
    new_id = {b: i for i, b in enumerate(order)} | {i: i for i in range(256, tok.vocab_size)}
    d = Tokenizer(tok.merges, tok.special_tokens, GPT2_PATTERN).to_hf()
    d["model"]["vocab"] = {s: new_id[i] for s, i in d["model"]["vocab"].items()}
    d["pre_tokenizer"] = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                          "use_regex": True}
    return d, new_id


def test_from_hf_reads_gpt2s_layout(tok):
    d, new_id = gpt2_layout(tok)
    g = Tokenizer.from_hf(d)
    assert g.merges is None and g.pattern == GPT2_PATTERN  # ids not bytes-then-merges: ranks
    text = biographies(30, seed=5) + "\n\nHE'LL 12345"
    same_split = Tokenizer(tok.merges, tok.special_tokens, GPT2_PATTERN)
    assert g.encode(text) == [new_id[i] for i in same_split.encode(text)]
    assert g.decode(g.encode(text)) == text


def test_the_tokenizers_library_encodes_like_us(tok):
    tokenizers = pytest.importorskip("tokenizers")
    hf = tokenizers.Tokenizer.from_str(json.dumps(tok.to_hf()))
    rng = random.Random(0)
    texts = [biographies(100, seed=6), "a\n\n b  c\r\n\t d  ", "HE'LL 12345 it's", EOT + "x"]
    texts += [random_text(rng, 200) for _ in range(20)]
    for text in texts:
        assert hf.encode(text).ids == tok.encode(text, "all"), repr(text)
        assert hf.decode(hf.encode(text).ids, skip_special_tokens=False) == text
    d, new_id = gpt2_layout(tok)  # and GPT-2's layout read by from_hf, as tokenizers runs it
    g = tokenizers.Tokenizer.from_str(json.dumps(d))
    assert g.encode(texts[0]).ids == Tokenizer.from_hf(d).encode(texts[0])

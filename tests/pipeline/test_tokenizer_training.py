"""Tokenizer training: the corpus sample it learns from, and how training refuses what it cannot do."""

from __future__ import annotations

import gzip
import json
import random

import pytest

from pipeline.clean import CleanConfig, CleanStats
from pipeline.sources import BadFileError
from pipeline.tokenizer import TokenizerError, sample_corpus, sample_texts, train_from_paths
from pipeline.tokenizer_step import tokenizer_main


def test_sample_texts_deterministic_sized_uniform():
    rng = random.Random(4)
    docs = [("x" * rng.choice([10, 1000])) + str(i) for i in range(4000)]
    size = sum(len(d) for d in docs)
    budget = size // 10
    sample = sample_texts(docs, budget, seed=7)
    assert sample == sample_texts(docs, budget, seed=7)
    assert sample != sample_texts(docs, budget, seed=8)
    assert sorted(sample) == sorted(sample_texts(list(reversed(docs)), budget, seed=7))  # order-free
    got = sum(len(d) for d in sample)
    assert budget <= got < budget + 1010  # reaches the budget, overshoots by at most one document
    assert sample == [d for d in docs if d in set(sample)]  # stream order kept
    # Uniform over documents, not bytes: long and short documents are equally likely to be picked.
    long_share = sum(len(d) > 100 for d in sample) / len(sample)
    assert 0.4 < long_share < 0.6
    assert sample_texts(docs[:3], 10**9, seed=0) == docs[:3]  # a budget above the total keeps all
    with pytest.raises(ValueError):
        sample_texts(docs, 0, seed=0)


def test_big_corpus_is_sampled_before_cleaning(tmp_path):
    rng = random.Random(4)
    words = [f"w{i}" for i in range(300)] + ["the", "and", "of"] * 20
    docs = [" ".join(rng.choice(words) for _ in range(rng.randint(10, 200))) + "." for _ in range(3000)]
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
    budget = path.stat().st_size // 10
    cfg = CleanConfig.for_source("minimal")
    stats = CleanStats()
    sample = sample_corpus([path], budget, cfg, 3, stats)
    # Only ~OVERSAMPLE / 10 of the documents were cleaned, and they still fill the budget.
    assert 0.06 * len(docs) < stats.documents_in < 0.2 * len(docs)
    assert budget <= sum(len(d.encode()) for d in sample) < 1.1 * budget
    assert set(sample) <= set(docs)
    assert sample == sample_corpus([path], budget, cfg, 3)  # deterministic given the seed
    assert sample != sample_corpus([path], budget, cfg, 4)
    first = train_from_paths([path], 400, budget, cfg, 3, tmp_path / "a.json")
    second = train_from_paths([path], 400, budget, cfg, 3, tmp_path / "b.json")
    assert first.read_text() == second.read_text()


def test_a_vocabulary_the_corpus_cannot_reach_is_an_error_naming_the_reachable_size(tmp_path):
    path = tmp_path / "small.jsonl"
    path.write_text("".join(json.dumps({"text": f"a small corpus, line {i}."}) + "\n" for i in range(40)))
    minimal = CleanConfig.for_source("minimal")
    with pytest.raises(TokenizerError, match=r"supports only [\d,]+ tokens, not --vocab-size 4,000"):
        train_from_paths([str(path)], 4000, 1 << 20, minimal, 0, tmp_path / "t.json")
    assert not (tmp_path / "t.json").exists()
    empty = tmp_path / "empty.jsonl"
    empty.write_text(json.dumps({"body": "no text field"}) + "\n")
    with pytest.raises(TokenizerError, match="no documents survived cleaning"):
        train_from_paths([str(empty)], 300, 1 << 20, minimal, 0, tmp_path / "t.json")


def test_tokenizer_cli_gives_one_line_errors(tmp_path, capsys):
    """A vocabulary below specials + bytes is a bad option (2); a corpus too small for the vocabulary is
    a bad input (1); neither is a traceback."""
    path = tmp_path / "small.jsonl"
    path.write_text("".join(json.dumps({"text": f"a small corpus, line {i}."}) + "\n" for i in range(40)))
    common = ["--data", str(path), "--out", str(tmp_path / "out"), "--clean-preset", "minimal"]
    assert tokenizer_main([*common, "--vocab-size", "100"]) == 2
    assert "--vocab-size must be at least 262" in capsys.readouterr().err
    assert tokenizer_main([*common, "--vocab-size", "4000"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "supports only" in err and "Traceback" not in err


def test_a_skipped_bad_file_is_left_out_of_the_sample_whole(tmp_path):
    """Its records read before the fault were sampled (and without skipping it stopped the run)."""
    cfg = CleanConfig.for_source("minimal")
    good = tmp_path / "d" / "good.jsonl"
    good.parent.mkdir()
    good.write_text("".join(json.dumps({"text": f"good document {i}."}) + "\n" for i in range(50)))
    bad = tmp_path / "d" / "bad.jsonl.gz"
    doomed = "".join(json.dumps({"text": f"doomed {i}."}) + "\n" for i in range(50)).encode()
    bad.write_bytes(gzip.compress(doomed)[:-10])  # truncated: its first records read fine
    with pytest.raises(BadFileError, match="bad.jsonl.gz"):
        sample_corpus([tmp_path / "d"], 1 << 20, cfg, 0)
    sample = sample_corpus([tmp_path / "d"], 1 << 20, cfg, 0, skip_bad_files=True)
    assert sample == [f"good document {i}." for i in range(50)]


def test_the_sample_reports_bad_records_in_one_line(tmp_path, caplog):
    """Each bad record was logged while sampling and again while prepare encoded: twice as many seemed bad."""
    path = tmp_path / "a.jsonl"
    path.write_bytes(b'{"text": "one two \xe9three"}\nnot json\n{"title": "x"}\nnot json either\n')
    with caplog.at_level("WARNING", logger="pipeline"):
        assert sample_corpus([path], 1 << 20, CleanConfig.for_source("minimal"), 0) == ["one two \ufffdthree"]
    # The first skipped record: line 1's invalid UTF-8 was repaired and kept, not skipped.
    assert [r.getMessage() for r in caplog.records] == [
        f"tokenizer sample: bad records skipped: invalid_json 2, missing_text 1 (the first: {path}:2: invalid_json)"]

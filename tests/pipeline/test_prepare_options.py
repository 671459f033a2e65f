"""`prepare` reruns under changed options: what shapes the store's bytes must rebuild it, and from chunk
results that fit the new options, never from those of the run before."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import pytest
from prepare_helpers import build, sentences, store_files, tiny_tokenizer

from pipeline.chunks import Settings
from pipeline.clean import CleanConfig
from pipeline.config import PrepareConfig
from pipeline.prepare import fingerprint
from pipeline.store import TokenStore


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory) -> Path:
    return tiny_tokenizer(tmp_path_factory.getbasetemp() / "tiny-tokenizer")


def _corpus(folder: Path) -> Path:
    """A JSON-lines file of several 64 KiB chunks and a CSV, each holding two text fields ("text", "body");
    the texts carry runs of spaces, which only the cleaning's whitespace rule removes."""
    folder.mkdir(parents=True)
    texts, bodies = sentences(1, 400), sentences(2, 400)
    texts = [t.replace(" ", "  ", 3) for t in texts]
    with open(folder / "a.jsonl", "w") as f:
        f.writelines(json.dumps({"text": t, "body": b}) + "\n" for t, b in zip(texts[:300], bodies[:300], strict=True))
    with open(folder / "b.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "body"])
        writer.writerows(zip(texts[300:], bodies[300:], strict=True))
    return folder


def _docs(store: Path) -> list[list[tuple[int, ...]]]:
    s = TokenStore(store)
    return [[tuple(d.tolist()) for d in s.documents(split)] for split in ("train", "val")]


@pytest.mark.parametrize("change", [
    {"clean": ["normalize_whitespace=false"]},
    {"text_field": "body"},
    {"csv_column": "body"},
    {"seed": 7},
    {"val_fraction": 0.5},
    {"val_fraction": 0.0},  # no val shard at all: the old one must not stay beside the new store
    # chunk_bytes alone is no change (the store does not depend on it): with a change that is, the first
    # chunk of a file spans other bytes than the one of the same start that the last run left
    {"chunk_bytes": 1 << 20, "val_fraction": 0.5},
], ids=lambda change: ",".join(f"{k}={v}" for k, v in change.items()))
def test_a_changed_option_rebuilds_the_store_a_fresh_build_would_give(tmp_path, tokenizer, change):
    """Options missing from a chunk result's name reused the last run's results (the documents of the
    old text field, cleaned the old way); an option missing from the store's fingerprint kept the old
    store as "up to date"; the seed once did not reach the split at all; without the reset before a
    rebuild, shards the new store does not have stayed. Every such mutation passed."""
    data = [str(_corpus(tmp_path / "corpus"))]
    opts = dict(data=data, name="c", workers=1, chunk_bytes=1 << 16, clean_preset="minimal")
    before = _docs(build(tmp_path / "out", tokenizer, **opts))
    rebuilt = build(tmp_path / "out", tokenizer, **{**opts, **change})
    fresh = build(tmp_path / "fresh", tokenizer, **{**opts, **change})
    assert store_files(rebuilt) == store_files(fresh)
    assert _docs(rebuilt) != before  # each option really shapes the documents


def test_the_fingerprint_holds_what_shapes_the_store_and_not_what_does_not(tmp_path):
    """An option missing from the fingerprint leaves the old store "up to date" under the new option:
    other shard sizes never applied, and a store that skipped bad files was kept by a run that should
    stop at them. Mutations dropping shard_tokens, skip_bad_files or a part's chunk size passed every
    test (these need no documents to change, or 1M tokens to show)."""
    path = tmp_path / "a.jsonl"
    path.write_text('{"text": "a"}\n')
    settings = Settings("tokenizer.json", "0" * 64, CleanConfig.for_source("minimal"), "text", "text")
    base = PrepareConfig(data=[str(path)])

    def fp(parts=None, **change) -> str:
        return fingerprint(replace(base, **change), [path], settings, parts)

    for change in ({"shard_tokens": 1 << 21}, {"skip_bad_files": True}, {"val_fraction": 0.1}, {"seed": 1}):
        assert fp(**change) != fp(), change
    for change in ({"workers": 3}, {"chunk_bytes": 1 << 20}, {"keep_work": False}, {"quiet": True}):
        assert fp(**change) == fp(), change  # the store's bytes do not depend on these
    # ... but which chunks land in which --shard part does: parts cut from other plans must not merge
    assert fp(parts=2, chunk_bytes=1 << 20) != fp(parts=2) != fp(parts=3)


def test_without_keep_work_the_chunk_results_go(tmp_path, tokenizer):
    """They cost about the store's size again on disk: keep_work=False must free it (a mutation keeping
    them passed every test), and the store must not need them."""
    store = build(tmp_path / "out", tokenizer, data=[str(_corpus(tmp_path / "corpus"))], name="c",
                  clean_preset="minimal", keep_work=False)
    assert not (store / ".work").exists()
    TokenStore(store, verify=True)


@pytest.mark.parametrize("option", ["data", "out", "name", "tokenizer", "source", "shard"])
@pytest.mark.parametrize("command", ["prepare", "tokenizer"])
def test_a_path_option_given_empty_is_refused(tmp_path, monkeypatch, capsys, option, command):
    """`--data "$DIR"` with DIR unset built the Shakespeare plays without a word (no --data is the
    default corpus), as did an empty --source; an empty --out built the store under the current folder,
    an empty --shard the whole store."""
    from pipeline.prepare import main
    from pipeline.tokenizer_step import tokenizer_main

    monkeypatch.chdir(tmp_path)
    run = {"prepare": main, "tokenizer": tokenizer_main}[command]
    assert run([f"--{option}", "", "--vocab-size", "300", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --{option}: an empty value") and "leave the option out" in err
    assert not any(tmp_path.iterdir())  # nothing built or downloaded anywhere

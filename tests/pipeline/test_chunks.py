"""Phase 1's result files on their own: a rerun reuses only whole files of this format, and a failed
chunk leaves nothing behind in .work."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
from prepare_helpers import sentences, tiny_tokenizer, write_jsonl

from common.files import sha256_file
from pipeline.chunks import MAGIC, Settings, build_chunk, load_result, result_meta
from pipeline.clean import CleanConfig
from pipeline.fast_encode import Encoder
from pipeline.readers import BadFileError
from pipeline.sources import plan_chunks
from pipeline.tokenizer import BOS_ID


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory) -> Path:
    return tiny_tokenizer(tmp_path_factory.getbasetemp() / "tiny-tokenizer")


def _build(source: Path, result: Path, tokenizer: Path) -> None:
    settings = Settings(str(tokenizer), sha256_file(tokenizer), CleanConfig.for_source("minimal"), "text", "text")
    [chunk] = plan_chunks([source])
    build_chunk(0, chunk, result, settings, Encoder(tokenizer))


def test_a_result_file_that_is_not_whole_or_not_ours_is_redone(tmp_path, tokenizer):
    """.work outlives runs and versions: a file under a result's name with a body of the wrong length
    (damaged) or another magic (another writer) must read as missing, so the chunk is redone, instead
    of being loaded as tokens. Mutations dropping either check passed every test."""
    result = tmp_path / "r.chunk"
    _build(write_jsonl(tmp_path / "a.jsonl", sentences(1, 20)), result, tokenizer)
    whole = result.read_bytes()
    meta = result_meta(result)
    assert meta is not None and meta["documents"] == 20
    data = load_result(result, meta)
    assert len(data.ids) == meta["tokens"] == int(data.lengths.sum())
    assert (data.ids[np.cumsum(data.lengths) - data.lengths] == BOS_ID).all()  # read back where it was written

    damaged = {"a body two bytes short": whole[2:], "a body two bytes long": b"\0\0" + whole,
               "another magic": whole[: -len(MAGIC)] + b"X" * len(MAGIC), "cut short": whole[: len(whole) // 2]}
    for why, content in damaged.items():
        result.write_bytes(content)
        assert result_meta(result) is None, why


def test_a_chunk_that_fails_leaves_no_temp_file(tmp_path, tokenizer):
    """With --skip-bad-files the run goes on past a bad file, and only the next run's start sweeps .work:
    a failed chunk's partial output must go with it (a mutation keeping it passed every test)."""
    good = write_jsonl(tmp_path / "in" / "a.jsonl", sentences(2, 400))
    bad = tmp_path / "in" / "b.jsonl.gz"
    bad.write_bytes(gzip.compress(good.read_bytes())[:-300])  # the stream ends mid-way
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(BadFileError):
        _build(bad, work / "b.chunk", tokenizer)
    assert not list(work.iterdir())

"""pipeline/fast_encode.py at the edges of a vocabulary: the id dtype at the uint16 limit, and the reasons
given for not running tiktoken on vocabularies it cannot reproduce."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from prepare_helpers import tiny_tokenizer

from pipeline.fast_encode import Encoder, bytes_to_unicode

TEXT = "Now is the winter of our discontent made glorious summer by this sun of York."


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory) -> Path:
    return tiny_tokenizer(tmp_path_factory.getbasetemp() / "tiny-tokenizer")


def _widened(tokenizer: Path, vocab_size: int, out: Path) -> Path:
    """The tokenizer with tokens no merge can produce added up to `vocab_size`: the same ids for text."""
    data = json.loads(tokenizer.read_text())
    vocab = data["model"]["vocab"]
    vocab.update({f"zzq{i}": i for i in range(len(vocab), vocab_size)})
    out.write_text(json.dumps(data))
    return out


@pytest.mark.parametrize(("vocab_size", "dtype"), [(1 << 16, np.uint16), ((1 << 16) + 1, np.uint32)])
def test_ids_are_uint16_exactly_while_the_vocabulary_fits(tmp_path, tokenizer, vocab_size, dtype):
    """65536 ids (0..65535) fit uint16: taking uint32 there (a mutation of `<=` to `<`) doubled the
    memory of every batch and passed every test, which only tried 600 and 70000."""
    enc = Encoder(_widened(tokenizer, vocab_size, tmp_path / "wide.json"))
    ids, lengths = enc.encode_to_array([TEXT, TEXT[:20]])
    assert enc.vocab_size == vocab_size and ids.dtype == dtype
    assert ids.tolist() == Encoder(tokenizer).encode(TEXT) + Encoder(tokenizer).encode(TEXT[:20])
    assert lengths.sum() == len(ids)
    # tiktoken would return such a token whole where HF runs the merges: the reason must say so
    assert enc.engine == "hf" and enc.why_not_tiktoken == "vocabulary has tokens that no merge produces"


def _no_null_byte(data: dict) -> None:
    del data["model"]["vocab"][bytes_to_unicode()[0]]  # in no merge of the tiny tokenizer


@pytest.mark.parametrize(("edit", "why"), [
    (lambda data: data.update(normalizer={"type": "Lowercase"}), "not a plain BPE model"),
    (lambda data: data["pre_tokenizer"].update(add_prefix_space=True), "pre-tokenizer is not ByteLevel"),
    (_no_null_byte, "not all 256 byte tokens are in the vocabulary"),
], ids=["normalizer", "prefix space", "missing byte"])
def test_a_vocabulary_tiktoken_cannot_reproduce_runs_on_hf_saying_why(tmp_path, tokenizer, edit, why):
    """Without its own check a missing byte token crashed the encoder (KeyError), and a normalizer or
    a prefix space, which the probe text alone then caught, was reported as a mere disagreement."""
    data = json.loads(tokenizer.read_text())
    edit(data)
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(data))
    enc = Encoder(path)
    assert enc.engine == "hf" and enc.why_not_tiktoken.startswith(why)
    assert enc.encode(TEXT) == Encoder(path, engine="hf").encode(TEXT)

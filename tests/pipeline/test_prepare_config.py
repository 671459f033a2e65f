"""pipeline/config.py: options are refused exactly outside their documented ranges, the cleaning preset
follows the corpus, and --clean overrides are typed, named and checked."""

from __future__ import annotations

import re

import pytest

from common.config import ConfigError
from pipeline.clean import CleanConfig
from pipeline.config import MIN_SHARD_TOKENS, PrepareConfig, check, clean_config, resolve_name
from pipeline.tokenizer import MIN_VOCAB_SIZE

# The edge of each range, which must still be accepted, and the first value past it.
EDGES = [
    ("val_fraction", 0.0, 1.0, "--val-fraction must be in [0, 1)"),
    ("chunk_bytes", 1 << 16, (1 << 16) - 1, "--chunk-bytes must be at least 65536"),
    ("shard_tokens", MIN_SHARD_TOKENS, MIN_SHARD_TOKENS - 1, "--shard-tokens must be at least 1048576"),
    ("vocab_size", MIN_VOCAB_SIZE, MIN_VOCAB_SIZE - 1, "--vocab-size must be at least 262"),
    ("workers", 0, -1, "--workers must be >= 0"),
]


@pytest.mark.parametrize(("field", "edge", "past", "message"), EDGES, ids=[e[0] for e in EDGES])
def test_each_range_is_refused_exactly_past_its_edge(field, edge, past, message):
    """--val-fraction 1 put every document in val (an empty train split), and mutations refusing the
    smallest allowed shard size or vocabulary passed every test, which tried values far off the edge."""
    check(PrepareConfig(**{field: edge}))
    with pytest.raises(ConfigError, match=re.escape(message)):
        check(PrepareConfig(**{field: past}))


@pytest.mark.parametrize(("options", "message"), [
    ({"merge": True, "shard": "0/2"}, "do not combine it with --shard"),
    ({"data": ["x.jsonl"], "source": "shakespeare"}, "give either --data or --source, not both"),
    ({"source": "wikipedia"}, "unknown source 'wikipedia'; known: shakespeare, redpajama"),
    ({"clean": ["gopher_min_words"]}, "--clean: expected key=value, got 'gopher_min_words'"),
    ({"clean": ["c4_min_words_per_line="]}, "--clean: 'c4_min_words_per_line=': no value given \\(write null"),
], ids=["merge with shard", "data with source", "unknown source", "clean item without value", "clean empty value"])
def test_contradictory_or_malformed_options_are_refused(options, message):
    """Each passed every test with its check mutated away; `--clean gopher_min_words` (no value) even
    switched that rule off, as YAML reads the missing value as null; so did `c4_min_words_per_line=`."""
    with pytest.raises(ConfigError, match=message):
        check(PrepareConfig(**options))


def test_the_auto_preset_is_the_plays_only_for_the_plays():
    """A mutation that cleaned every --data corpus with the plays' preset (no C4 line rules, looser
    Gopher limits) passed every test."""
    assert clean_config(PrepareConfig()) == CleanConfig.for_source("shakespeare")
    assert clean_config(PrepareConfig(source="shakespeare")) == CleanConfig.for_source("shakespeare")
    assert clean_config(PrepareConfig(data=["web.jsonl"])) == CleanConfig.for_source("web")
    assert clean_config(PrepareConfig(source="redpajama")) == CleanConfig.for_source("web")


def test_clean_overrides_take_dashes_and_yaml_values():
    cfg = clean_config(PrepareConfig(clean=["gopher-min-words=20", "c4_terminal_punct=false", "c4_min_sentences=null"]))
    assert (cfg.gopher_min_words, cfg.c4_terminal_punct, cfg.c4_min_sentences) == (20, False, None)
    assert cfg.gopher_max_words == CleanConfig.for_source("web").gopher_max_words  # the rest: the preset's


def test_a_file_names_the_store_by_its_stem_before_every_suffix(tmp_path):
    corpus = tmp_path / "my corpus.jsonl.zst"
    corpus.write_bytes(b"")
    assert resolve_name(PrepareConfig(data=[str(corpus)])) == "my_corpus"

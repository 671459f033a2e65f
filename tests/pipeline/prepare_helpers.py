"""Shared by the test_prepare*.py files: a small tokenizer trained once, corpora, store comparison."""

from __future__ import annotations

import json
import random
from functools import cache
from pathlib import Path

from pipeline.clean import CleanConfig
from pipeline.config import PrepareConfig
from pipeline.prepare import prepare
from pipeline.sources import shakespeare_plays
from pipeline.tokenizer import train_from_paths

ROOT = Path(__file__).resolve().parents[2]
VOCAB = 600  # small: trains in a second or two, still a real byte-level BPE with merges


@cache
def tiny_tokenizer(folder: Path) -> Path:
    """One tokenizer per test process, trained on a slice of the plays (the tests' corpora are English)."""
    folder.mkdir(parents=True, exist_ok=True)
    return Path(train_from_paths(shakespeare_plays()[:6], VOCAB, 2 << 20, CleanConfig.for_source("shakespeare"),
                                 0, folder / "tokenizer.json"))


def build(out: Path, tokenizer: Path, **options) -> Path:
    """Build a store quietly; returns its folder."""
    cfg = PrepareConfig(out=str(out), tokenizer=str(tokenizer), quiet=True, **options)
    return prepare(cfg)


def sentences(seed: int, n: int) -> list[str]:
    """Distinct prose-like documents from the plays' lines (so the `minimal` and web presets keep them)."""
    rng = random.Random(seed)
    lines = [ln for p in shakespeare_plays()[:3] for ln in p.read_text().splitlines() if len(ln.split()) > 4]
    return [" ".join(rng.choice(lines).strip("*_ ") for _ in range(rng.randint(3, 12))) + f" ({seed}.{i})"
            for i in range(n)]


def write_jsonl(path: Path, texts: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(texts)))
    return path


def two_parts(tmp_path: Path, tokenizer: Path, files: int, docs: int, first: int) -> tuple[Path, dict]:
    """A corpus folder and its two --shard parts built under tmp_path/sh; returns (folder, options)."""
    folder = tmp_path / "corpus"
    for k in range(files):
        write_jsonl(folder / f"f{k}.jsonl", sentences(k + first, docs))
    opts = dict(data=[str(folder)], name="m", workers=1, clean_preset="minimal")
    for i in range(2):
        build(tmp_path / "sh", tokenizer, shard=f"{i}/2", **opts)
    return folder, opts


def store_files(store: Path) -> dict[str, bytes]:
    """Every file of a finished store (not the hidden .work/.lock), by name: for byte-for-byte comparison."""
    return {p.name: p.read_bytes() for p in sorted(store.iterdir()) if p.is_file() and not p.name.startswith(".")}

"""The validation split of a store merged from `--shard` parts against one job's store over the same inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from prepare_helpers import build, sentences, tiny_tokenizer, write_jsonl

from pipeline.assemble import PrepareError
from pipeline.fast_encode import Encoder
from pipeline.store import TokenStore
from train.sampler import WindowSampler

PARTS = 8


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory) -> Path:
    return tiny_tokenizer(tmp_path_factory.getbasetemp() / "tiny-tokenizer")


def _val_texts(store: TokenStore, encoder: Encoder) -> list[str]:
    return sorted(encoder.decode(d[1:].tolist()) for d in store.documents("val"))


def test_a_store_merged_from_many_parts_holds_a_val_window_wherever_one_jobs_store_does(tmp_path, tokenizer):
    """Each part wrote its own small val shard and the merge pointed at them all; a window never straddles
    two shards, so with many parts `make train` refused the merged store's val split as too small (no
    shard of block_size + 1 tokens) where one job's store, holding the same documents in one shard, had
    room for it."""
    folder = tmp_path / "corpus"
    for k in range(PARTS):  # one chunk per file: one file per part
        write_jsonl(folder / f"f{k}.jsonl", sentences(k + 200, 6))
    opts = dict(data=[str(folder)], name="m", workers=1, clean_preset="minimal", val_fraction=0.1)
    one_job = TokenStore(build(tmp_path / "full", tokenizer, **opts), verify=True)
    parts = [TokenStore(build(tmp_path / "sh", tokenizer, shard=f"{i}/{PARTS}", **opts)) for i in range(PARTS)]
    merged = TokenStore(build(tmp_path / "sh", tokenizer, merge=True, **opts), verify=True)
    # A window one token longer than any part's val split: only the parts' val joined holds one.
    block_size = max(p.num_tokens("val") for p in parts)
    assert one_job.num_tokens("val") >= block_size + 1
    for store in (one_job, merged):
        x, _ = WindowSampler(store, "val", block_size, 2, seed=0).next_batch()
        assert x.shape == (2, block_size)
    # The same documents in val as one job's store, in as many shards of the store's own.
    encoder = Encoder(str(tokenizer))
    assert _val_texts(merged, encoder) == _val_texts(one_job, encoder)
    assert merged.manifest["splits"]["val"]["tokens"] == one_job.manifest["splits"]["val"]["tokens"]
    assert [s["file"] for s in merged.manifest["splits"]["val"]["shards"]] == ["val-00000.bin"]


def _parts_and_merge(tmp_path: Path, tokenizer: Path, parts: int = 2) -> tuple[Path, dict]:
    folder = tmp_path / "corpus"
    for k in range(parts):
        write_jsonl(folder / f"f{k}.jsonl", sentences(k + 300, 30))
    opts = dict(data=[str(folder)], name="m", workers=1, clean_preset="minimal", val_fraction=0.2)
    for i in range(parts):
        build(tmp_path / "sh", tokenizer, shard=f"{i}/{parts}", **opts)
    return build(tmp_path / "sh", tokenizer, merge=True, **opts), opts


def test_a_part_whose_val_shard_went_bad_is_not_copied_under_new_checksums(tmp_path, tokenizer):
    """The merged store vouched for a part's val shard with the part's sha256, so a shard gone bad on disk
    was caught by verify; a copy checksummed afresh would vouch for the bad bytes."""
    root, opts = _parts_and_merge(tmp_path, tokenizer)
    shard = root / "part-1-of-2" / "val-00000.bin"
    ids = np.fromfile(shard, dtype=np.uint16)
    ids[len(ids) // 2] = (ids[len(ids) // 2] + 1) % 600  # still an id of the vocabulary
    ids.tofile(shard)  # same size: opening the part does not notice
    (root / "manifest.json").unlink()  # as a part rebuilt since leaves it: the merge runs again
    with pytest.raises(PrepareError, match=rf"{shard}: sha256 differs from its part's manifest.*rerun --shard 1/2"):
        build(tmp_path / "sh", tokenizer, merge=True, **opts)


def test_a_store_merged_with_val_in_the_parts_is_merged_again(tmp_path, tokenizer, caplog):
    """A store merged before val was copied points into the parts for it: with the parts unchanged, the
    merge called it up to date and its val stayed one shard per part."""
    root, opts = _parts_and_merge(tmp_path, tokenizer)
    with caplog.at_level("INFO", logger="pipeline"):
        build(tmp_path / "sh", tokenizer, merge=True, **opts)
    assert "merge is up to date" in caplog.text
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["splits"]["val"]["shards"] = [
        {**s, "file": f"{d}/{s['file']}", "index": f"{d}/{s['index']}"} for d in ("part-0-of-2", "part-1-of-2")
        for s in json.loads((root / d / "manifest.json").read_text())["splits"]["val"]["shards"]]
    (root / "manifest.json").write_text(json.dumps(manifest))
    TokenStore(root, verify=True)  # a store the trainer reads as it is
    caplog.clear()
    with caplog.at_level("INFO", logger="pipeline"):
        build(tmp_path / "sh", tokenizer, merge=True, **opts)
    # Its manifest's sha256 changes, by which a checkpoint refuses to resume on another store: said.
    assert f"{root}: merged again over the same parts" in caplog.text and "cannot resume" in caplog.text
    assert [s["file"] for s in TokenStore(root, verify=True).manifest["splits"]["val"]["shards"]] == ["val-00000.bin"]


def test_the_copied_val_is_packed_with_the_jobs_shard_tokens_as_one_job_packs_it(tmp_path, tokenizer, monkeypatch):
    """With one file per part, part order is plan order: the merged val shards are one job's, byte for byte,
    cut at the jobs' --shard-tokens rather than at its default."""
    # Copied a few documents at a time, some longer than a batch on their own, as a big shard is.
    monkeypatch.setattr("pipeline.merge._COPY_TOKENS", 200)
    folder = tmp_path / "corpus"
    for k in range(2):
        write_jsonl(folder / f"f{k}.jsonl", sentences(k + 400, 5000))  # ~700k val tokens each
    opts = dict(data=[str(folder)], name="m", workers=1, clean_preset="minimal", val_fraction=0.9,
                shard_tokens=1 << 20)
    one_job = TokenStore(build(tmp_path / "full", tokenizer, **opts)).manifest["splits"]["val"]
    for i in range(2):
        build(tmp_path / "sh", tokenizer, shard=f"{i}/2", **opts)
    merged = TokenStore(build(tmp_path / "sh", tokenizer, merge=True, **opts), verify=True).manifest["splits"]["val"]
    assert len(one_job["shards"]) > 1 and merged == one_job

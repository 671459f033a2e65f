"""Phase 2 of `prepare`: chunk results, in plan order, to the final shards of one store.

Sequential and close to memory speed: per chunk, a vectorised exact dedup against every document
seen before (first occurrence wins), a train/val decision from each document's hash, and two
appends through `ShardWriter`. Because the walk is in plan order and nothing depends on which
process produced a chunk or when, the store is byte-identical for any number of workers.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from common.files import fsync_dir
from common.lock import exclusive_lock
from pipeline.chunks import ChunkData
from pipeline.clean import CleanStats
from pipeline.readers import ReadStats
from pipeline.store import ShardWriter, dtype_for_vocab
from pipeline.store_layout import MANIFEST, SPLITS

SPLIT_HASH = "splitmix64"
SPLIT_RULE = "val if splitmix64(doc_hash(text) ^ splitmix64(seed)) < val_fraction * 2**64, else train"
_M64 = (1 << 64) - 1


def splitmix64(x: np.ndarray) -> np.ndarray:
    """The SplitMix64 finaliser: a bijection on uint64 that spreads any input bits over all outputs."""
    x = np.asarray(x, dtype=np.uint64)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def is_val(hashes: np.ndarray, val_fraction: float, seed: int) -> np.ndarray:
    """The split depends on the text (and seed) alone, so adding input files never moves a document."""
    salt = splitmix64(np.array([seed & _M64], dtype=np.uint64))[0]
    threshold = np.uint64(min(int(val_fraction * 2.0**64), _M64))
    return splitmix64(hashes.astype(np.uint64) ^ salt) < threshold


class HashSet:
    """A set of uint64 kept as a few sorted runs whose sizes at least double down the list.

    8 bytes per distinct document (a Python set costs ~60), batch lookups with `searchsorted`, and
    amortised O(n log n) inserts: a new run is merged into the last one while that is not larger.
    """

    def __init__(self) -> None:
        self.runs: list[np.ndarray] = []

    def __len__(self) -> int:
        return sum(len(r) for r in self.runs)

    def contains(self, values: np.ndarray) -> np.ndarray:
        found = np.zeros(len(values), dtype=bool)
        for run in self.runs:
            at = np.minimum(np.searchsorted(run, values), len(run) - 1)
            found |= run[at] == values
        return found

    def add(self, values: np.ndarray) -> None:
        """Insert sorted, distinct values that are not in the set yet."""
        run = values
        while self.runs and len(self.runs[-1]) <= len(run):
            run = np.concatenate((self.runs.pop(), run))
            run.sort()  # in place: the transient peak is two copies of the set, not three
        if len(run):
            self.runs.append(run)

    def sorted(self) -> np.ndarray:
        return np.sort(np.concatenate(self.runs)) if self.runs else np.zeros(0, np.uint64)


class Assembler:
    """Writes one store's shards from chunk results handed over in plan order."""

    def __init__(self, root, vocab_size: int, val_fraction: float, seed: int, shard_tokens: int):
        dtype = dtype_for_vocab(vocab_size)
        self.writers = {s: ShardWriter(root, s, dtype, vocab_size, shard_tokens) for s in SPLITS}
        self.val_fraction, self.seed = val_fraction, seed
        self.seen = HashSet()
        self.clean, self.read = CleanStats(), ReadStats()
        self.totals = {s: {"tokens": 0, "documents": 0, "text_bytes": 0} for s in SPLITS}
        self.bad_files: list[dict[str, Any]] = []
        # Files that yielded data (path -> size), in plan order; a file whose every chunk failed is not one.
        self.sources: dict[str, int] = {}

    def add(self, data: ChunkData) -> None:
        self.sources.setdefault(data.meta["path"], data.meta["size"])
        self.clean.merge(data.clean_stats)
        self.read.merge(data.read_stats)
        hashes = data.hashes
        # First occurrence inside the chunk, then not seen in any earlier chunk.
        distinct, first = np.unique(hashes, return_index=True)
        new = ~self.seen.contains(distinct)
        self.seen.add(distinct[new])
        keep = np.zeros(len(hashes), dtype=bool)
        keep[first[new]] = True
        dup = ~keep
        self.clean.documents_kept -= int(dup.sum())
        self.clean.bytes_kept -= int(data.text_bytes[dup].sum())
        if dup.any():
            self.clean.dropped["duplicate"] += int(dup.sum())
            # As every other rule counts them: the bytes read, not what cleaning left of them.
            self.clean.dropped_bytes["duplicate"] += int(data.raw_bytes[dup].sum())
        val = is_val(hashes, self.val_fraction, self.seed)
        for split, mask in (("train", keep & ~val), ("val", keep & val)):
            if not mask.any():
                continue
            lengths = data.lengths[mask]
            ids = data.ids if mask.all() else data.ids[np.repeat(mask, data.lengths)]
            self.writers[split].add(ids, lengths)
            t = self.totals[split]
            t["tokens"] += int(lengths.sum())
            t["documents"] += int(mask.sum())
            t["text_bytes"] += int(data.text_bytes[mask].sum())

    def add_bad_file(self, error: dict[str, Any]) -> None:
        self.bad_files.append(error)

    def finish(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """Close the shards; the manifest's `splits` and `stats` sections."""
        splits = {s: {**self.totals[s], "shards": self.writers[s].close()} for s in SPLITS}
        c = self.clean
        if c.documents_in != c.documents_kept + sum(c.dropped.values()):
            raise AssertionError(f"document counts do not add up: {c.documents_in} in, {c.documents_kept} "
                                 f"kept, {dict(c.dropped)} dropped")
        if c.documents_kept != sum(t["documents"] for t in self.totals.values()):
            raise AssertionError("documents kept differ from documents written")
        stats = {**c.to_dict(), "bad_records": dict(sorted(self.read.bad_records.items())),
                 "invalid_utf8_records": self.read.invalid_utf8, "bad_record_examples": self.read.examples,
                 "bad_files": self.bad_files}
        return splits, stats


class PrepareError(Exception):
    """A problem with the inputs or the store that the user must fix (printed without a traceback)."""


# Whoever holds a store's lock: prepare (a full build or a --shard job), a merge or make tokenizer.
_BUSY = "another job (prepare, merge or make tokenizer) is using this store; wait until it has finished"


@contextlib.contextmanager
def store_locked(store: Path) -> Iterator[None]:
    """One writer per store: two runs interleaving phase 2 would corrupt each other's shards. A store
    that is busy is refused rather than waited for (a build can take hours)."""
    lock = exclusive_lock(store / ".lock")
    if lock is None:
        raise PrepareError(f"{store}: {_BUSY}")
    with lock:
        yield


@contextlib.contextmanager
def store_and_parts_locked(root: Path, parts: Iterable[Path]) -> Iterator[None]:
    """`store_locked` for the store in `root` and each of its --shard parts at once: for what changes how
    they fit together (a merge, a new tokenizer), which no job writing any of them may see half done."""
    with contextlib.ExitStack() as held:
        held.enter_context(store_locked(root))
        for part in parts:
            held.enter_context(store_locked(part))
        yield


# Files phase 2 (re)writes, including the temp names of ShardWriter and atomic_write_bytes.
_STORE_FILE = re.compile(r"(train|val)-\d+\.(bin|idx)(\.tmp)?|doc_hashes\.bin|\..+\.tmp\d+")


def reset_store(root: Path) -> None:
    """Unmark the store as finished (manifest first), then delete its old shards before new ones land.

    Without this, a rebuild would overwrite shards that the old manifest still vouches for.
    """
    (root / MANIFEST).unlink(missing_ok=True)
    fsync_dir(root)
    for f in root.iterdir():
        if f.is_file() and _STORE_FILE.fullmatch(f.name):
            f.unlink()

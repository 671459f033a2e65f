"""Phase 2's parts on their own: the documented split rule, the dedup set, what a rebuild deletes."""

from __future__ import annotations

import numpy as np

from pipeline.assemble import HashSet, is_val, reset_store, splitmix64
from pipeline.store import write_store

_M64 = (1 << 64) - 1


def _splitmix64_reference(x: int) -> int:
    """Vigna's SplitMix64 finaliser, written out in Python integers."""
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def test_the_split_follows_the_rule_the_manifest_names():
    """The manifest promises SPLIT_RULE with SplitMix64: any other mixing (a changed shift or constant)
    moves documents between train and val for stores and parts built by another version, and passed
    every store test, whose reference calls `is_val` itself."""
    golden = 0x9E3779B97F4A7C15  # SplitMix64 seeded with 0 outputs finaliser(k * golden) for k = 1, 2, 3
    outputs = splitmix64(np.array([golden, 2 * golden & _M64, 3 * golden & _M64], dtype=np.uint64))
    assert [int(v) for v in outputs] == [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F]

    hashes = np.random.default_rng(1).integers(0, 2**64, size=2000, dtype=np.uint64, endpoint=False)
    for fraction, seed in ((0.05, 0), (0.5, 7), (0.3, -1)):
        salt = _splitmix64_reference(seed & _M64)
        expected = [_splitmix64_reference(int(h) ^ salt) < int(fraction * 2**64) for h in hashes]
        assert is_val(hashes, fraction, seed).tolist() == expected


def test_a_batch_with_nothing_new_leaves_the_set_usable():
    """A chunk whose documents were all seen before (or a file that cleaning emptied) adds an empty
    batch; kept as a run of its own, the next lookup indexed into it and phase 2 crashed."""
    s = HashSet()
    s.add(np.array([3, 5, 8], dtype=np.uint64))
    s.add(np.zeros(0, dtype=np.uint64))
    assert s.contains(np.array([5, 6], dtype=np.uint64)).tolist() == [True, False]
    assert s.sorted().tolist() == [3, 5, 8]


def test_a_rebuild_deletes_the_temp_files_a_killed_build_left(tmp_path):
    """A build killed while writing leaves a shard under its temp name (up to a shard's size) and the
    temp files of atomic writes; nothing else ever deletes them, so each rebuild must."""
    write_store(tmp_path, {"train": [np.full(5, 7)], "val": [np.full(3, 9)]}, vocab_size=100)
    leftovers = ["train-00001.bin.tmp", ".train-00001.idx.tmp4242", ".manifest.json.tmp4242",
                 ".doc_hashes.bin.tmp17", "doc_hashes.bin"]
    kept = ["tokenizer.json", "notes.txt", "train-00001.bin.bak"]  # not the store's own: left alone
    for name in leftovers + kept:
        (tmp_path / name).write_bytes(b"x")
    reset_store(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept)

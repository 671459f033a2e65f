import json
import os
import pickle

import numpy as np
import pytest

from common.files import atomic_write_bytes
from pipeline.store import ShardWriter, StoreError, TokenStore, dtype_for_vocab, write_store


def _docs(rng, n, vocab):
    return [rng.integers(6, vocab, size=rng.integers(1, 50)) for _ in range(n)]


def test_round_trip_documents_and_index(tmp_path):
    rng = np.random.default_rng(0)
    train, val = _docs(rng, 40, 300), _docs(rng, 5, 300)
    store = write_store(tmp_path, {"train": train, "val": val}, vocab_size=300, train_text_bytes=1000)
    got = list(store.documents("train"))
    assert len(got) == 40
    for want, have in zip(train, got, strict=True):
        assert have[0] == 5 and np.array_equal(have[1:], want)
    assert store.num_tokens("train") == sum(len(d) + 1 for d in train)
    assert store.bytes_per_token("train") == pytest.approx(1000 / store.num_tokens("train"))
    assert store.shards("train")[0].dtype == np.uint16


def test_shards_roll_over_without_splitting_documents(tmp_path):
    w = ShardWriter(tmp_path, "train", np.uint16, 100, shard_tokens=10)
    lengths = np.array([4, 4, 4, 12, 1])
    ids = np.arange(lengths.sum()) % 100
    w.add(ids, lengths)
    shards = w.close()
    # An oversized document gets a shard of its own rather than being cut.
    assert [s["tokens"] for s in shards] == [8, 4, 12, 1]
    assert [s["documents"] for s in shards] == [2, 1, 1, 1]
    assert not list(tmp_path.glob("*.tmp"))


def test_dtype_follows_vocab():
    assert dtype_for_vocab(65536) == np.uint16 and dtype_for_vocab(65537) == np.uint32


def test_id_beyond_vocab_is_refused(tmp_path):
    w = ShardWriter(tmp_path, "train", np.uint16, 10)
    with pytest.raises(StoreError, match="vocab_size"):
        w.add(np.array([5, 11]), np.array([2]))


def test_validation_catches_missing_truncated_and_corrupt(tmp_path):
    rng = np.random.default_rng(1)
    write_store(tmp_path, {"train": _docs(rng, 10, 70000), "val": _docs(rng, 2, 70000)}, vocab_size=70000)
    assert TokenStore(tmp_path, verify=True).dtype == np.uint32
    shard = tmp_path / "train-00000.bin"
    data = bytearray(shard.read_bytes())
    data[0] ^= 1
    shard.write_bytes(bytes(data))
    TokenStore(tmp_path)  # sizes still match: only a checksum pass sees it
    with pytest.raises(StoreError, match="sha256"):
        TokenStore(tmp_path, verify=True)
    shard.write_bytes(bytes(data[:-4]))
    with pytest.raises(StoreError, match="bytes, manifest says"):
        TokenStore(tmp_path)
    shard.unlink()
    with pytest.raises(StoreError, match="missing"):
        TokenStore(tmp_path)
    shard.mkdir()
    with pytest.raises(StoreError, match="train-00000.bin: listed in the manifest but unreadable"):
        TokenStore(tmp_path)
    shard.rmdir()
    (tmp_path / "manifest.json").unlink()
    with pytest.raises(StoreError, match="not a finished token store"):
        TokenStore(tmp_path)


def test_a_missing_store_is_told_the_make_line_that_builds_it(tmp_path, monkeypatch):
    """data=data_cache/mydata (never built, or a typo) was told "run `make prepare`", which builds the
    Shakespeare store only, and said "no manifest.json" of a folder that does not exist."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(StoreError, match=r"mydata: no such folder \(build it: make prepare NAME=mydata DATA=\.\.\.;"):
        TokenStore("data_cache/mydata")
    (tmp_path / "data_cache" / "shakespeare").mkdir(parents=True)  # the default source's: the bare command builds it
    with pytest.raises(StoreError, match=r"shakespeare: no manifest.json; not a finished token store \(build it: "
                                         r"make prepare; rerun"):
        TokenStore(tmp_path / "data_cache" / "shakespeare")
    # Elsewhere than data_cache/ (where make prepare writes), and a name with a space: a line that works.
    with pytest.raises(StoreError) as err:
        TokenStore(tmp_path / "my stores" / "my data")
    assert f"""(build it: make prepare NAME='my data' DATA=... ARGS="--out '{tmp_path}/my stores'";""" in str(err.value)
    # --shard parts waiting for their --merge (or a part rebuilt since): a whole build would be the wrong advice.
    (tmp_path / "data_cache" / "web" / "part-0-of-2").mkdir(parents=True)
    with pytest.raises(StoreError, match=r"web: no manifest.json: its --shard parts are not merged \(bin/prepare.py "
                                         r"--out data_cache --name web --merge\)"):
        TokenStore("data_cache/web")


def test_verify_checks_the_index_files_too(tmp_path):
    """A corrupt .idx moves document starts (align_bos sampling, documents()) without a size change."""
    write_store(tmp_path, {"train": [np.full(5, 7)] * 4, "val": [np.full(3, 9)] * 2}, vocab_size=100)
    index = tmp_path / "val-00000.idx"
    data = bytearray(index.read_bytes())
    data[8] ^= 1  # the second document's offset, 4 -> 5
    index.write_bytes(bytes(data))
    TokenStore(tmp_path)
    with pytest.raises(StoreError, match="val-00000.idx: sha256 differs"):
        TokenStore(tmp_path, verify=True)


def test_a_write_cut_off_part_way_leaves_the_old_file_whole(tmp_path, disk_fills_at):
    """atomic_write_bytes (manifests, tokenizer.json, checkpoint markers) goes through a temp file:
    written in place, a full disk left the old file truncated, holding part of the new one."""
    path = tmp_path / "manifest.json"
    path.write_bytes(b"old " * 100)
    with disk_fills_at(1000), pytest.raises(OSError):
        atomic_write_bytes(path, b"new " * 1000)
    assert path.read_bytes() == b"old " * 100
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]  # nor is its temp file left behind


def test_wrong_format_version(tmp_path):
    write_store(tmp_path, {"train": [np.array([7])], "val": []}, vocab_size=10)
    m = json.loads((tmp_path / "manifest.json").read_text())
    m["format_version"] = 99
    (tmp_path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(StoreError, match="format_version"):
        TokenStore(tmp_path)


def test_a_tokenizer_changed_after_the_build_is_caught_on_every_open(tmp_path):
    """Not only with verify: a tokenizer retrained in place makes the store's ids mean other tokens."""
    tokenizer = tmp_path / "tokenizer.json"
    tokenizer.write_text('{"version": "one"}')
    write_store(tmp_path, {"train": [np.array([7, 8])], "val": []}, vocab_size=10, tokenizer_path=tokenizer)
    TokenStore(tmp_path)
    tokenizer.write_text('{"version": "two"}')
    with pytest.raises(StoreError, match="not the tokenizer this store was encoded with"):
        TokenStore(tmp_path)


def test_an_open_store_never_reads_files_of_a_rebuild_under_its_manifest(tmp_path):
    """Files were opened lazily (and the index reread on every call) with nothing checked: a rebuild
    between validation and use paired the new files with the old manifest, silently. Now a split
    mapped before the rebuild goes on reading the old files, and one first asked for after it is
    refused. (Mapping every file at open instead ran out of file descriptors with many shards.)"""
    old = [np.full(5, 7)] * 4
    write_store(tmp_path, {"train": old, "val": [np.full(3, 9)]}, vocab_size=100)
    store = TokenStore(tmp_path, verify=True)
    store.shards("train"), store.doc_index("train")
    blob = pickle.dumps(store)
    write_store(tmp_path, {"train": [np.full(2, 8)] * 20, "val": [np.full(3, 7)]}, vocab_size=100)
    assert [d[1:].tolist() for d in store.documents("train")] == [d.tolist() for d in old]
    assert [len(i) for i in store.doc_index("train")] == [4]
    for read in (store.shards, store.doc_index):
        with pytest.raises(StoreError, match="rebuilt since it was opened"):
            read("val")
    assert len(blob) < 2000  # a path, not the token data
    with pytest.raises(StoreError, match="rebuilt since this store was opened"):
        pickle.loads(blob)
    assert pickle.loads(pickle.dumps(TokenStore(tmp_path))).num_tokens("train") == 60


def test_a_rebuild_while_the_store_is_being_opened_is_refused(tmp_path, monkeypatch):
    """Files replaced by ones of the same sizes between reading the manifest and checking them opened fine."""
    write_store(tmp_path, {"train": [np.full(5, 7)] * 4, "val": [np.full(3, 9)]}, vocab_size=100)
    real, rebuilds = TokenStore._check, [{"train": [np.full(5, 8)] * 4, "val": [np.full(3, 9)]}]

    def rebuilt_meanwhile(self, *args):
        if rebuilds:  # once, before the first file is checked
            write_store(tmp_path, rebuilds.pop(), vocab_size=100)
        return real(self, *args)

    monkeypatch.setattr(TokenStore, "_check", rebuilt_meanwhile)
    with pytest.raises(StoreError, match="rebuilt while being opened"):
        TokenStore(tmp_path)


def test_opening_a_store_of_many_shards_holds_no_file_descriptors(tmp_path):
    """Every shard and index was mapped at open, each map holding a descriptor: a store of ~500 shards,
    or a merge of a few hundred parts, failed with 'Too many open files'."""
    write_store(tmp_path, {"train": [np.full(5, 7)] * 300, "val": [np.full(3, 9)] * 3}, vocab_size=100,
                shard_tokens=6)
    fds = lambda: len(os.listdir("/proc/self/fd"))  # noqa: E731
    before = fds()
    stores = [TokenStore(tmp_path) for _ in range(4)]
    assert fds() == before
    stores[0].doc_index("train")
    assert fds() == before
    assert len(stores[0].shards("train")) == 300 and fds() == before + 300  # one per map, for the split asked for


def _shard(m):
    return m["splits"]["train"]["shards"][0]


@pytest.mark.parametrize("edit, match", [
    (lambda m: m["splits"]["train"].pop("shards"), "missing key 'splits.train.shards'"),
    (lambda m: _shard(m).pop("size"), r"missing key 'splits.train.shards\[0\].size'"),
    (lambda m: m["tokenizer"].pop("path"), "missing key 'tokenizer.path'"),
    (lambda m: m.update(vocab_size="100"), "vocab_size is '100', expected a non-negative integer"),
    (lambda m: m.update(dtype="nonsense"), "dtype 'nonsense' is not a numpy dtype"),
    (lambda m: m["splits"]["val"]["shards"].append("v"), r"splits.val.shards\[1\] is 'v', expected an object"),
    (lambda m: _shard(m).update(tokens=48), r"splits.train.shards\[0\].tokens is 48 \(96 bytes of uint16\), but "
                                            r"splits.train.shards\[0\].size is 48"),
    (lambda m: _shard(m).update(tokens=23), r"splits.train.shards\[0\].tokens is 23 \(46 bytes of uint16\)"),
    (lambda m: m["splits"]["train"].update(tokens=1), "splits.train.tokens is 1, but its shards hold"),
    (lambda m: m["splits"]["val"].update(documents=9), "splits.val.documents is 9, but its shards hold 1"),
    (lambda m: [_shard(m).update(documents=25), m["splits"]["train"].update(documents=25)],
     r"splits.train.shards\[0\].documents is 25 in 24 tokens"),
    (lambda m: [_shard(m).update(documents=0), m["splits"]["train"].update(documents=0)],
     r"splits.train.shards\[0\].documents is 0 in 24 tokens"),
])
def test_a_malformed_manifest_is_a_store_error_naming_the_field(tmp_path, edit, match):
    """Missing or mistyped fields were bare KeyError/TypeError/ValueError; shard token counts that did
    not match the file's size, or split totals that did not add up, opened fine even with verify."""
    write_store(tmp_path, {"train": [np.full(5, 7)] * 4, "val": [np.full(3, 9)]}, vocab_size=100)
    m = json.loads((tmp_path / "manifest.json").read_text())
    edit(m)
    (tmp_path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(StoreError, match=f"manifest.json: {match}"):
        TokenStore(tmp_path, verify=True)


def test_a_manifest_that_is_not_an_object(tmp_path):
    (tmp_path / "manifest.json").write_text("[1, 2]")
    with pytest.raises(StoreError, match="manifest.json: not a JSON object"):
        TokenStore(tmp_path)

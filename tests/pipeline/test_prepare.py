"""`prepare` end to end: the Shakespeare store, determinism, no-op reruns, dedup, split stability, parts."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from prepare_helpers import ROOT, build, sentences, store_files, tiny_tokenizer, two_parts, write_jsonl

from pipeline.assemble import HashSet, PrepareError, is_val
from pipeline.clean import CleanConfig, clean_text, doc_hash, full_clean
from pipeline.config import PrepareConfig, resolve_name
from pipeline.fast_encode import Encoder
from pipeline.prepare import prepare
from pipeline.sources import shakespeare_plays
from pipeline.store import TokenStore

MINIMAL = {"clean_preset": "minimal"}


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory) -> Path:
    return tiny_tokenizer(tmp_path_factory.getbasetemp() / "tiny-tokenizer")


def _docs(store: TokenStore, split: str) -> list[tuple[int, ...]]:
    return [tuple(d.tolist()) for d in store.documents(split)]


def _check_counts(manifest: dict) -> None:
    s = manifest["stats"]
    assert s["documents_in"] == s["documents_kept"] + sum(s["dropped"].values())
    assert s["documents_kept"] == sum(manifest["splits"][k]["documents"] for k in ("train", "val"))


def test_shakespeare_store_reads_back_as_the_cleaned_text(tmp_path, tokenizer):
    store = TokenStore(build(tmp_path, tokenizer, workers=2), verify=True)
    m = store.manifest
    _check_counts(m)
    assert store.root.name == "shakespeare" and m["dtype"] == "uint16" and m["bos_id"] == 5
    assert m["stats"]["documents_kept"] >= 0.99 * m["stats"]["documents_in"] > 700  # one document per scene
    assert 20 <= m["splits"]["val"]["documents"] <= 70  # ~5% of ~780 scenes
    assert store.tokenizer_path == (store.root / "tokenizer.json").resolve()
    assert len(m["sources"]) == 38

    # The reference: the seed's API, then dedup (first wins) and the hash split, by hand.
    expected: dict[str, list[str]] = {"train": [], "val": []}
    seen = set()
    for text in full_clean(shakespeare_plays(), CleanConfig.for_source("shakespeare")):
        h = doc_hash(text)
        if h not in seen:
            seen.add(h)
            expected["val" if is_val(np.array([h], np.uint64), 0.05, 0)[0] else "train"].append(text)
    enc = Encoder(store.tokenizer_path)
    for split in ("train", "val"):
        docs = list(store.documents(split))
        assert all(d[0] == store.bos_id and store.bos_id not in d[1:] for d in docs)
        assert [enc.decode(d[1:]) for d in docs] == expected[split]
        text_bytes = sum(len(t.encode()) for t in expected[split])
        assert m["splits"][split]["text_bytes"] == text_bytes


def _corpus(folder: Path, dup_every: int = 0) -> Path:
    """Three files of ~120 KB (several 64 KiB chunks each) with duplicates within and across files."""
    texts = [sentences(k, 300) for k in range(3)]
    if dup_every:
        for k, part in enumerate(texts):
            part[dup_every::dup_every] = [texts[0][i % 40] for i in range(len(part[dup_every::dup_every]))]
            texts[k] = part
    for k, part in enumerate(texts):
        write_jsonl(folder / f"part-{k}.jsonl", part)
    return folder


def test_store_bytes_do_not_depend_on_workers_or_chunk_size(tmp_path, tokenizer):
    data = [str(_corpus(tmp_path / "corpus", dup_every=7))]
    one = build(tmp_path / "a", tokenizer, data=data, name="c", workers=1, chunk_bytes=1 << 16, **MINIMAL)
    two = build(tmp_path / "b", tokenizer, data=data, name="c", workers=2, chunk_bytes=1 << 20, **MINIMAL)
    assert len(list((one / ".work").glob("*.chunk"))) >= 6  # really split into many chunks
    assert store_files(one) == store_files(two)


def test_rerun_is_a_noop_and_a_touched_file_redoes_only_its_chunks(tmp_path, tokenizer):
    data = [str(_corpus(tmp_path / "corpus"))]
    opts = dict(data=data, name="c", workers=1, chunk_bytes=1 << 16, **MINIMAL)
    store = build(tmp_path / "out", tokenizer, **opts)
    manifest = store / "manifest.json"
    before = manifest.stat().st_mtime_ns, manifest.read_bytes()
    work = {p.name: p.stat().st_mtime_ns for p in (store / ".work").glob("*.chunk")}
    build(tmp_path / "out", tokenizer, **opts)
    assert (manifest.stat().st_mtime_ns, manifest.read_bytes()) == before

    touched = tmp_path / "corpus" / "part-1.jsonl"
    touched.write_text(touched.read_text())  # same bytes, new mtime: that file is planned afresh
    build(tmp_path / "out", tokenizer, **opts)
    after = {p.name: p.stat().st_mtime_ns for p in (store / ".work").glob("*.chunk")}
    kept = set(work) & set(after)
    assert kept and all(work[k] == after[k] for k in kept)  # other files' chunks were reused as they were
    assert len(set(after) - set(work)) == len(set(work) - set(after)) > 0
    assert json.loads(manifest.read_bytes())["splits"] == json.loads(before[1])["splits"]


def test_a_duplicate_drops_the_bytes_it_was_read_with(tmp_path, tokenizer):
    """Every rule counts a dropped document's bytes as read; duplicates counted what cleaning left, so the
    summary's "bytes trimmed from kept docs" also held what cleaning cut from the duplicates."""
    text = "The quality of mercy is not strained; it droppeth as the gentle rain from heaven."
    padded = "  " + text.replace(" ", "   ") + "\t\n\n\n"  # cleans to `text`
    write_jsonl(tmp_path / "c" / "a.jsonl", [text, padded, padded])
    stats = TokenStore(build(tmp_path / "out", tokenizer, data=[str(tmp_path / "c")], name="d",
                             **MINIMAL)).manifest["stats"]
    assert stats["dropped"] == {"duplicate": 2}
    assert stats["dropped_bytes"] == {"duplicate": 2 * len(padded)}
    assert stats["bytes_in"] - stats["bytes_kept"] - sum(stats["dropped_bytes"].values()) == 0


def test_text_bytes_are_of_the_cleaned_text(tmp_path, tokenizer):
    """bits/byte divides by a split's text_bytes: they must be the bytes the tokens encode, not those read
    (a mutation counting the bytes as read passed every test, whose texts cleaning left as they were)."""
    text = "The quality of mercy is not strained; it droppeth as the gentle rain from heaven."
    write_jsonl(tmp_path / "c" / "a.jsonl", ["  " + text.replace(" ", "   ") + "\n\n\n"])
    m = TokenStore(build(tmp_path / "out", tokenizer, data=[str(tmp_path / "c")], name="t", **MINIMAL)).manifest
    assert sum(m["splits"][s]["text_bytes"] for s in ("train", "val")) == len(text) == m["stats"]["bytes_kept"]


def test_exact_dedup_across_chunks_files_and_processes(tmp_path, tokenizer):
    folder = _corpus(tmp_path / "corpus", dup_every=5)
    store = TokenStore(build(tmp_path / "out", tokenizer, data=[str(folder)], name="d", workers=2,
                             chunk_bytes=1 << 16, **MINIMAL))
    texts = [json.loads(line)["text"] for f in sorted(folder.glob("*.jsonl")) for line in f.read_text().splitlines()]
    cleaned = [clean_text(t, CleanConfig.for_source("minimal"))[0] for t in texts]
    first = list(dict.fromkeys(cleaned))  # first occurrences, in reading order
    stats = store.manifest["stats"]
    assert stats["dropped"]["duplicate"] == len(cleaned) - len(first) > 100
    _check_counts(store.manifest)
    enc = Encoder(store.tokenizer_path)
    got = [enc.decode(d[1:]) for split in ("train", "val") for d in store.documents(split)]
    val = is_val(np.array([doc_hash(t) for t in first], np.uint64), 0.05, 0)
    pairs = list(zip(first, val, strict=True))
    assert got == [t for t, v in pairs if not v] + [t for t, v in pairs if v]  # train, then val, in reading order


def test_split_is_stable_when_a_file_is_added(tmp_path, tokenizer):
    folder = _corpus(tmp_path / "corpus")
    small = TokenStore(build(tmp_path / "a", tokenizer, data=[str(folder)], name="s", **MINIMAL))
    write_jsonl(folder / "part-9.jsonl", sentences(9, 400))
    large = TokenStore(build(tmp_path / "b", tokenizer, data=[str(folder)], name="s", **MINIMAL))
    for split in ("train", "val"):
        before, after = _docs(small, split), set(_docs(large, split))
        assert before and set(before) <= after
        assert len(after) > len(before)


def test_shards_then_merge_reference_parts_in_place(tmp_path, tokenizer):
    folder = tmp_path / "corpus"
    a, b = sentences(1, 60), sentences(2, 60)
    b[10] = a[3]  # files 0 and 1 land in different parts: a duplicate that only the full build can drop
    for k, texts in enumerate([a, b, sentences(3, 60), sentences(4, 60)]):
        write_jsonl(folder / f"f{k}.jsonl", texts)
    opts = dict(data=[str(folder)], name="m", **MINIMAL)
    full = TokenStore(build(tmp_path / "full", tokenizer, **opts))
    for i in range(2):
        part = TokenStore(build(tmp_path / "sh", tokenizer, shard=f"{i}/2", **opts), verify=True)
        assert part.root.name == f"part-{i}-of-2" and part.manifest["part"]["count"] == 2
    merged_root = build(tmp_path / "sh", tokenizer, merge=True, **opts)
    merged = TokenStore(merged_root, verify=True)
    # No training token copied; val is, into shards of the store's own (test_merge_val.py)
    assert [p.name for p in merged_root.glob("*.bin")] == ["val-00000.bin"]
    assert merged.manifest["splits"]["train"]["shards"][0]["file"].startswith("part-0-of-2/")
    all_docs = lambda s: Counter(_docs(s, "train") + _docs(s, "val"))  # noqa: E731
    extra = all_docs(merged) - all_docs(full)
    assert sum(extra.values()) == 1 and not all_docs(full) - all_docs(merged)
    assert merged.manifest["stats"]["cross_part_duplicates"] == 1
    assert merged.manifest["stats"]["documents_in"] == full.manifest["stats"]["documents_in"]
    mtime = (merged_root / "manifest.json").stat().st_mtime_ns
    build(tmp_path / "sh", tokenizer, merge=True, **opts)
    assert (merged_root / "manifest.json").stat().st_mtime_ns == mtime


def _all_docs(store: TokenStore) -> Counter:
    return Counter(_docs(store, "train") + _docs(store, "val"))


def test_merge_refuses_parts_cut_from_different_plans(tmp_path, tokenizer):
    folder, opts = two_parts(tmp_path, tokenizer, files=4, docs=30, first=10)
    build(tmp_path / "sh", tokenizer, merge=True, **opts)
    # A file sorting first shifts every chunk's position: only part 0 is rebuilt, part 1 is from the old plan.
    write_jsonl(folder / "e.jsonl", sentences(99, 30))
    build(tmp_path / "sh", tokenizer, shard="0/2", **opts)
    with pytest.raises(PrepareError, match=r"different plans.*Stale.*part-1-of-2; rerun --shard 1/2") as err:
        build(tmp_path / "sh", tokenizer, merge=True, **opts)
    assert "part-0-of-2;" not in str(err.value)
    build(tmp_path / "sh", tokenizer, shard="1/2", **opts)
    merged = TokenStore(build(tmp_path / "sh", tokenizer, merge=True, **opts), verify=True)
    full = TokenStore(build(tmp_path / "full", tokenizer, **opts))
    assert _all_docs(merged) == _all_docs(full) and merged.manifest["stats"]["cross_part_duplicates"] == 0


def test_merge_refuses_parts_built_without_a_plan_fingerprint(tmp_path, tokenizer):
    _, opts = two_parts(tmp_path, tokenizer, files=3, docs=20, first=20)
    # What an older version wrote: no plan in the part section, a fingerprint computed another way.
    old = tmp_path / "sh" / "m" / "part-1-of-2" / "manifest.json"
    manifest = json.loads(old.read_text())
    del manifest["part"]["plan_fingerprint"], manifest["part"]["plan_bad_files"]
    manifest["inputs_fingerprint"] = "0" * 64
    old.write_text(json.dumps(manifest))
    with pytest.raises(PrepareError, match=r"part-1-of-2: built by an older version.*rebuild with --shard 1/2"):
        build(tmp_path / "sh", tokenizer, merge=True, **opts)
    build(tmp_path / "sh", tokenizer, shard="1/2", **opts)  # not "up to date": the old fingerprint never matches
    merged = TokenStore(build(tmp_path / "sh", tokenizer, merge=True, **opts), verify=True)
    full = TokenStore(build(tmp_path / "full", tokenizer, **opts))
    assert _all_docs(merged) == _all_docs(full)


def test_merge_lists_each_bad_file_once(tmp_path, tokenizer):
    folder = tmp_path / "corpus"
    for k in range(3):
        write_jsonl(folder / f"f{k}.jsonl", sentences(k + 30, 20))
    (folder / "a_pretty.json").write_text('{\n  "text": "fails while planning"\n}\n')
    broken = folder / "g_truncated.jsonl.gz"
    broken.write_bytes(gzip.compress((folder / "f0.jsonl").read_bytes() * 4)[:-300])  # fails while reading
    opts = dict(data=[str(folder)], name="m", workers=1, skip_bad_files=True, **MINIMAL)
    full = TokenStore(build(tmp_path / "full", tokenizer, **opts)).manifest["stats"]["bad_files"]
    assert [b["path"] for b in full] == [str(folder / "a_pretty.json"), str(broken)]
    for i in range(3):
        build(tmp_path / "sh", tokenizer, shard=f"{i}/3", **opts)
    merged = TokenStore(build(tmp_path / "sh", tokenizer, merge=True, **opts)).manifest["stats"]["bad_files"]
    assert merged == full


def test_uint32_store_when_the_vocabulary_exceeds_uint16(tmp_path, tokenizer):
    data = json.loads(tokenizer.read_text())
    vocab = data["model"]["vocab"]
    # Tokens no merge can produce: the ids of real text stay the same, only the dtype must widen.
    vocab.update({f"zzq{i}": i for i in range(len(vocab), 70_000)})
    big = tmp_path / "big.json"
    big.write_text(json.dumps(data))
    data = [str(write_jsonl(tmp_path / "c" / "x.jsonl", sentences(5, 50)))]
    wide = TokenStore(build(tmp_path / "w", big, data=data, name="x", **MINIMAL), verify=True)
    narrow = TokenStore(build(tmp_path / "n", tokenizer, data=data, name="x", **MINIMAL))
    assert wide.manifest["dtype"] == "uint32" and wide.manifest["vocab_size"] >= 70_000
    assert wide.shards("train")[0].dtype == np.uint32
    assert _docs(wide, "train") == _docs(narrow, "train")


CC = ROOT.parent / "shared" / "corpora" / "cc_en_head"


@pytest.mark.skipif(not CC.is_dir(), reason="../shared/corpora/cc_en_head not present")
def test_real_web_text(tmp_path, tokenizer):
    store = TokenStore(build(tmp_path, tokenizer, data=[str(CC)]), verify=True)
    m = store.manifest
    assert store.root.name == "cc_en_head" and m["stats"]["documents_in"] == 20
    assert 0 < m["stats"]["documents_kept"] <= 20 and m["stats"]["bad_records"] == {}
    assert m["clean"]["c4"] is True  # the web preset, not the plays'
    _check_counts(m)


def test_cli_help_and_bad_options():
    out = subprocess.run([sys.executable, "bin/prepare.py", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0
    for flag in ("--data", "--name", "--source", "--tokenizer", "--vocab-size", "--skip-bad-files", "--shard",
                 "--workers", "--merge"):
        assert flag in out.stdout
    bad = subprocess.run([sys.executable, "bin/prepare.py", "--shard", "2/2"], cwd=ROOT, capture_output=True,
                         text=True)
    assert bad.returncode == 2 and "--shard" in bad.stderr
    out = subprocess.run([sys.executable, "bin/tokenizer.py", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0 and "--vocab-size" in out.stdout


def test_store_name_defaults():
    assert resolve_name(PrepareConfig()) == "shakespeare"
    assert resolve_name(PrepareConfig(source="redpajama")) == "redpajama"
    assert resolve_name(PrepareConfig(data=["../shared/corpora/cc_en_head"])) == "cc_en_head"
    assert resolve_name(PrepareConfig(data=["data/*.jsonl"])) == "data"
    assert resolve_name(PrepareConfig(data=["x"], name="mine")) == "mine"


@pytest.mark.parametrize("name", [".", "..", "../escape", "a/b", "/abs"])
def test_a_store_name_that_is_not_a_plain_folder_name_is_refused(tmp_path, capsys, name):
    """`make prepare NAME=.` built the store in data_cache/ itself, NAME=../escape outside it."""
    from pipeline.prepare import main

    out = tmp_path / "cache" / "data_cache"
    assert main(["--name", name, "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: --name must be a plain folder name (the store goes to {out}/<name>/), got {name!r}"
    assert not (tmp_path / "cache").exists()
    assert resolve_name(PrepareConfig(name="my store")) == "my store"  # spaces are fine


def test_hash_set_and_split_fraction():
    rng = np.random.default_rng(0)
    values = rng.integers(0, 2**63, size=10_000, dtype=np.uint64)
    s = HashSet()
    for part in np.array_split(values, 37):
        part = np.unique(part)
        s.add(part[~s.contains(part)])
    assert len(s) == len(np.unique(values)) and s.contains(values).all()
    assert not s.contains(values + np.uint64(1)).any() and len(s.runs) <= 14  # runs at least double
    assert 0.04 < is_val(values, 0.05, 0).mean() < 0.06
    assert (is_val(values, 0.05, 0) != is_val(values, 0.05, 1)).any()  # the seed changes the split


def test_tokenizer_trained_from_a_custom_csv_column(tmp_path):
    """With no tokenizer given, prepare trains one from the same column it then encodes."""
    texts = sentences(5, 40)
    csv_path = tmp_path / "posts.csv"
    csv_path.write_text("id,body\n" + "".join(f'{i},"{t}"\n' for i, t in enumerate(texts)))
    cfg = PrepareConfig(out=str(tmp_path / "out"), data=[str(csv_path)], name="posts", csv_column="body",
                        vocab_size=400, quiet=True, **MINIMAL)
    store = TokenStore(prepare(cfg))
    assert store.manifest["stats"]["documents_kept"] == 40
    encoder = Encoder(store.tokenizer_path)
    kept = {encoder.decode(d[1:].tolist()) for split in ("train", "val") for d in store.documents(split)}
    assert kept == set(texts)


def test_replacing_a_finished_store_is_said(tmp_path, tokenizer, caplog):
    """A rebuild under other options silently replaced the store a run was trained on (whose checkpoints
    then refuse to resume on it): the README's own example did that to the default store."""
    folder = tmp_path / "c"
    write_jsonl(folder / "a.jsonl", sentences(9, 50))
    opts = {"data": [str(folder)], "name": "d", **MINIMAL}
    with caplog.at_level("WARNING", logger="pipeline"):
        build(tmp_path / "out", tokenizer, **opts)
        build(tmp_path / "out", tokenizer, **opts)  # up to date: nothing replaced
        assert not caplog.records
        build(tmp_path / "out", tokenizer, val_fraction=0.5, **opts)
    assert [r.getMessage().split(":")[0] for r in caplog.records] == [str(tmp_path / "out" / "d")]
    assert "replacing the store built there earlier" in caplog.records[0].getMessage()


@pytest.mark.parametrize("value", ["0", "-5", "1000"])
def test_shard_tokens_below_the_minimum_is_refused(tmp_path, capsys, value):
    """--shard-tokens 0 was accepted and wrote one shard per document."""
    from pipeline.prepare import main

    # (a missing --tokenizer: were the value taken, the run would stop there, not build a store)
    assert main(["--shard-tokens", value, "--out", str(tmp_path / "out"), "--tokenizer", str(tmp_path / "none.json"),
                 "--quiet"]) == 2
    assert capsys.readouterr().err == f"error: --shard-tokens must be at least 1048576 (1 << 20), got {value}\n"
    assert not (tmp_path / "out").exists()


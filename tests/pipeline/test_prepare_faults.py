"""`prepare` under faults: kill -9 mid-run (a real subprocess), corrupt and missing input files."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from prepare_helpers import ROOT, build, sentences, store_files, tiny_tokenizer, write_jsonl

from common.files import sha256_file
from common.lock import exclusive_lock
from pipeline.assemble import reset_store
from pipeline.clean import CleanConfig
from pipeline.prepare import _input_bytes, main
from pipeline.sources import Chunk, shakespeare_plays
from pipeline.store import StoreError, TokenStore, write_store
from pipeline.tokenizer import train_from_paths
from pipeline.tokenizer_step import tokenizer_main


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory) -> Path:
    return tiny_tokenizer(tmp_path_factory.getbasetemp() / "tiny-tokenizer")


def test_kill_9_then_rerun_gives_the_uninterrupted_store(tmp_path, tokenizer):
    corpus = tmp_path / "corpus"
    for k in range(4):  # ~8 MB in 64 KiB chunks: ~120 chunks, a few seconds of work for 2 workers
        write_jsonl(corpus / f"s{k}.jsonl", sentences(k, 4000))
    args = ["--data", str(corpus), "--name", "k", "--tokenizer", str(tokenizer), "--clean-preset", "minimal",
            "--chunk-bytes", "65536", "--quiet"]
    cmd = [sys.executable, "bin/prepare.py", *args, "--out", str(tmp_path / "killed"), "--workers", "2"]
    work = tmp_path / "killed" / "k" / ".work"
    # Its own session, so the kill takes the pool's workers too, like a node going down.
    proc = subprocess.Popen(cmd, cwd=ROOT, start_new_session=True, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while len(list(work.glob("*.chunk"))) < 8:
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (work.parent / "manifest.json").exists()
    finished = {p.name: p.stat().st_mtime_ns for p in work.glob("*.chunk")}

    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert all((work / name).stat().st_mtime_ns == t for name, t in finished.items())  # reused, not redone
    assert not list(work.glob("*.tmp*"))
    reference = build(tmp_path / "clean", tokenizer, data=[str(corpus)], name="k", clean_preset="minimal", workers=1)
    assert store_files(work.parent) == store_files(reference)
    TokenStore(work.parent, verify=True)


def _bad_corpus(folder: Path) -> tuple[Path, Path]:
    good = write_jsonl(folder / "a_good.jsonl", sentences(1, 50))
    bad = folder / "b_bad.jsonl.gz"
    bad.write_bytes(gzip.compress(good.read_bytes() * 4)[:-300])  # truncated: the stream ends mid-way
    write_jsonl(folder / "c_more.jsonl", sentences(2, 50))
    return good, bad


def test_bad_file_stops_the_run_naming_file_and_place(tmp_path, tokenizer, capsys):
    _, bad = _bad_corpus(tmp_path / "corpus")
    argv = ["--data", str(tmp_path / "corpus"), "--out", str(tmp_path), "--name", "b", "--tokenizer", str(tokenizer),
            "--workers", "1", "--quiet", "--clean-preset", "minimal"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert str(bad) in err and "past the record at line" in err and "--skip-bad-files" in err
    assert "Traceback" not in err
    store = tmp_path / "b"
    assert not (store / "manifest.json").exists()  # nothing half-written looks complete
    finished = list((store / ".work").glob("*.chunk"))
    assert len(finished) == 1  # the good file before it is kept for the next run

    assert main([*argv, "--skip-bad-files"]) == 0
    m = TokenStore(store, verify=True).manifest
    assert [b["path"] for b in m["stats"]["bad_files"]] == [str(bad)]
    assert "compressed bytes, past the record at line" in m["stats"]["bad_files"][0]["error"]
    assert m["stats"]["documents_kept"] == 100 and finished[0].exists()
    assert [s["path"] for s in m["sources"]] == [str(p) for p in sorted((tmp_path / "corpus").iterdir()) if p != bad]


@pytest.mark.parametrize("command", [main, tokenizer_main])
def test_a_bad_file_met_training_the_tokenizer_names_the_skip_option(tmp_path, capsys, command):
    """Training the store's tokenizer reads the files before any chunk is planned, so a fresh prepare (or
    bin/tokenizer.py) meets a bad file there first: it stopped without a word of --skip-bad-files."""
    _, bad = _bad_corpus(tmp_path / "corpus")
    argv = ["--data", str(tmp_path / "corpus"), "--out", str(tmp_path), "--name", "t", "--vocab-size", "300",
            "--workers", "1", "--quiet", "--clean-preset", "minimal"]
    assert command(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {bad}:") and "past the record at line" in err
    assert err.endswith("\n(--skip-bad-files leaves such files out and goes on)\n")
    assert command([*argv, "--skip-bad-files"]) == 0
    assert (tmp_path / "t" / "tokenizer.json").is_file()


@pytest.mark.parametrize("name, content, why", [
    ("b_bad.json.gz", b"not gzip", "cannot read as json (compressed): Not a gzipped file"),  # layout sniffed
    ("b_bad.parquet", b"not parquet", "not a readable parquet file"),  # row groups counted
])
def test_a_file_that_fails_planning_names_the_skip_option_and_is_skipped_by_it(tmp_path, tokenizer, capsys,
                                                                              name, content, why):
    """Bad files met by a worker said what --skip-bad-files would do; those met while planning the
    chunks, before any worker ran, stopped the run without a word of it."""
    write_jsonl(tmp_path / "corpus" / "a_good.jsonl", sentences(1, 50))
    bad = tmp_path / "corpus" / name
    bad.write_bytes(content)
    argv = ["--data", str(tmp_path / "corpus"), "--out", str(tmp_path), "--name", "p", "--tokenizer", str(tokenizer),
            "--workers", "1", "--quiet", "--clean-preset", "minimal"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {bad}: {why}")
    assert err.endswith("\n(--skip-bad-files records such files in the manifest and goes on)\n")
    assert main([*argv, "--skip-bad-files"]) == 0
    m = TokenStore(tmp_path / "p", verify=True).manifest
    assert [b["path"] for b in m["stats"]["bad_files"]] == [str(bad)] and why in m["stats"]["bad_files"][0]["error"]
    assert m["stats"]["documents_kept"] == 50


def test_missing_path_and_bad_records(tmp_path, tokenizer, capsys):
    missing = tmp_path / "nope" / "x.jsonl"
    assert main(["--data", str(missing), "--out", str(tmp_path), "--tokenizer", str(tokenizer), "--quiet"]) == 1
    assert str(missing) in capsys.readouterr().err

    lines = [json.dumps({"text": t}) for t in sentences(3, 20)]
    lines[4:4] = ["{not json", json.dumps({"txt": "x"}), json.dumps({"text": None}), json.dumps({"text": 7})]
    data = tmp_path / "records.jsonl"
    data.write_text("\n".join(lines) + "\n")
    m = TokenStore(build(tmp_path, tokenizer, data=[str(data)], clean_preset="minimal")).manifest
    assert m["stats"]["bad_records"] == {"invalid_json": 1, "missing_text": 1, "null_text": 1, "non_string_text": 1}
    assert m["stats"]["documents_in"] == m["stats"]["documents_kept"] == 20
    assert m["stats"]["bad_record_examples"][0].startswith(f"{data}:5")


@pytest.mark.parametrize("content, why", [
    ('{"text": "a"}\n{"text": "b"}\n', "not valid JSON (Extra data at line 2)"),  # TOKENIZER=some.jsonl
    ('{"a": 1}', "no model.vocab mapping tokens to ids"),
    ('{"model": {"vocab": {"a": 0}}}', "not a tokenizer.json: "),  # tokenizers' own parse error
    (b"\x80 tokens", "not UTF-8 text"),
])
def test_a_tokenizer_option_naming_no_tokenizer_is_one_line(tmp_path, capsys, content, why):
    """--tokenizer some.jsonl (or any JSON not a tokenizer) ended in a JSONDecodeError or tokenizers'
    `Exception: expected ','` traceback."""
    bad = tmp_path / "tok.json"
    bad.write_bytes(content if isinstance(content, bytes) else content.encode())
    data = write_jsonl(tmp_path / "d.jsonl", sentences(3, 10))
    assert main(["--data", str(data), "--out", str(tmp_path / "out"), "--tokenizer", str(bad), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {bad}: not a tokenizer.json: ") and why in err and len(err.splitlines()) == 1


def _parquet_with_bad_row_groups(path: Path, bad_groups: tuple[int, ...]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"text": sentences(5, 3000)}), path, row_group_size=300, compression="snappy",
                   use_dictionary=False)  # so a column chunk starts at its data page
    meta = pq.ParquetFile(path).metadata
    with open(path, "r+b") as f:
        for g in bad_groups:  # garbage in the middle of the group's compressed data
            col = meta.row_group(g).column(0)
            f.seek(col.data_page_offset + col.total_compressed_size // 2)
            f.write(b"\xff" * 64)
    return path


def test_a_skipped_bad_file_is_skipped_whole_whatever_the_chunk_size(tmp_path, tokenizer):
    """Chunks of a file before its fault were kept (so the store depended on --chunk-bytes) and a file
    failing in two chunks was listed twice."""
    corpus = tmp_path / "corpus"
    write_jsonl(corpus / "a.jsonl", sentences(1, 200))
    bad = _parquet_with_bad_row_groups(corpus / "b.parquet", (4, 7))
    write_jsonl(corpus / "c.jsonl", sentences(2, 200))
    stores = [build(tmp_path / f"chunk{size}", tokenizer, data=[str(corpus)], name="s", clean_preset="minimal",
                    workers=2, chunk_bytes=size, skip_bad_files=True) for size in (1 << 16, 16 << 20)]
    assert len(list((stores[0] / ".work").glob("*.chunk"))) > 4  # the parquet file was cut into several chunks
    assert store_files(stores[0]) == store_files(stores[1])
    m = TokenStore(stores[0], verify=True).manifest
    assert [b["path"] for b in m["stats"]["bad_files"]] == [str(bad)]
    assert "row group 4 (rows from 1201)" in m["stats"]["bad_files"][0]["error"]  # the first fault
    assert [s["path"] for s in m["sources"]] == [str(corpus / "a.jsonl"), str(corpus / "c.jsonl")]
    assert m["stats"]["documents_kept"] == 400


def test_a_skipped_file_that_reads_now_is_taken_in_by_the_rerun(tmp_path, tokenizer, caplog):
    """A file skipped as bad and then mended without a new size or mtime (`chmod`, a bad disk read, a
    byte put back): the rerun said "up to date" on the fingerprint and left its documents out for good."""
    corpus = tmp_path / "corpus"
    write_jsonl(corpus / "a.jsonl", sentences(1, 50))
    good = gzip.compress(("".join(json.dumps({"text": t}) + "\n" for t in sentences(2, 60))).encode())
    damaged = bytearray(good)
    damaged[-8] ^= 0xFF  # the stored CRC
    bad = corpus / "b.jsonl.gz"
    bad.write_bytes(bytes(damaged))
    stamp = bad.stat().st_mtime_ns

    def run() -> dict:
        return TokenStore(build(tmp_path, tokenizer, data=[str(corpus)], name="s", clean_preset="minimal",
                                skip_bad_files=True)).manifest

    first = run()
    assert [b["path"] for b in first["stats"]["bad_files"]] == [str(bad)] and first["stats"]["documents_kept"] == 50
    with caplog.at_level("INFO", logger="pipeline"):
        assert run() == first  # still bad: read again, and nothing rebuilt
    assert "reading again the 1 file(s) it skipped as bad" in caplog.text and "up to date" in caplog.text
    bad.write_bytes(good)
    os.utime(bad, ns=(stamp, stamp))
    caplog.clear()
    with caplog.at_level("INFO", logger="pipeline"):
        mended = run()
    assert f"{bad} reads now (it was skipped as bad): rebuilding" in caplog.text
    assert mended["stats"]["bad_files"] == [] and mended["stats"]["documents_kept"] == 110
    assert mended["inputs_fingerprint"] == first["inputs_fingerprint"]  # the fingerprint could not tell


def test_the_store_keeps_its_tokenizer_until_a_rebuild_really_starts(tmp_path, tokenizer, capsys):
    """A --tokenizer was copied over the store's before the vocabulary check and the lock: a refused
    run left a finished store that no longer opened, or swapped the tokenizer of a build in progress."""
    other = Path(train_from_paths(shakespeare_plays()[:4], 700, 1 << 20, CleanConfig.for_source("shakespeare"), 0,
                                  tmp_path / "other" / "tokenizer.json"))
    data = write_jsonl(tmp_path / "d.jsonl", sentences(3, 100))
    store = build(tmp_path, tokenizer, data=[str(data)], name="t", clean_preset="minimal")
    before = sha256_file(store / "tokenizer.json")
    argv = ["--data", str(data), "--out", str(tmp_path), "--name", "t", "--tokenizer", str(other), "--quiet",
            "--clean-preset", "minimal"]

    assert main([*argv, "--vocab-size", "600"]) == 1
    assert f"{other} has a vocabulary of 700" in capsys.readouterr().err
    with exclusive_lock(store / ".lock"):
        assert main(argv) == 1
    assert "another job (prepare, merge or make tokenizer) is using this store" in capsys.readouterr().err
    assert sha256_file(store / "tokenizer.json") == before
    TokenStore(store, verify=True)

    assert main(argv) == 0  # a run that goes ahead does install it
    assert sha256_file(store / "tokenizer.json") == sha256_file(other)
    assert TokenStore(store, verify=True).vocab_size == 700


def test_a_store_where_cleaning_kept_nothing_says_so(tmp_path, tokenizer, capsys):
    data = write_jsonl(tmp_path / "short.jsonl", ["too short", "also short"])  # the web rules drop both
    assert main(["--data", str(data), "--out", str(tmp_path), "--tokenizer", str(tokenizer), "--quiet"]) == 0
    assert "warning: the store is empty" in (out := capsys.readouterr().out) and "says which rules dropped" in out
    bad = tmp_path / "bad" / "bad.jsonl"
    bad.parent.mkdir()
    bad.write_text('{"title": "no text"}\nnot json\n')  # bad records only: no rule dropped anything
    assert main(["--data", str(bad), "--out", str(tmp_path), "--tokenizer", str(tokenizer), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "warning: the store is empty" in out and "no record held a usable text" in out


def test_the_rate_is_of_this_runs_work(tmp_path, tokenizer, capsys):
    """A rerun that found every chunk finished reported the whole input's MB over its fraction of a
    second (31.7 MB/s for a 0.9 MB corpus)."""
    data = write_jsonl(tmp_path / "c" / "a.jsonl", sentences(3, 200))
    argv = ["--data", str(data.parent), "--out", str(tmp_path), "--tokenizer", str(tokenizer), "--quiet",
            "--clean-preset", "minimal"]
    assert main(argv) == 0
    assert main([*argv, "--val-fraction", "0.2"]) == 0  # the split changed, the chunks did not
    last = capsys.readouterr().out.rstrip().splitlines()[-1]
    assert "(1 finished by an earlier run; 0.0 MB tokenized now at 0.0 MB/s)" in last


def test_progress_shares_a_parquet_files_bytes_among_its_chunks():
    """A parquet chunk's range is of row groups, not bytes: counted as bytes, a 900-byte file cut in three
    added 3 to the summary's "MB of input" and its MB/s (a mutation doing so passed every test)."""
    chunks = [Chunk("a.parquet", g, g + 1, g, 900, 0, "parquet") for g in range(3)]
    chunks.append(Chunk("b.jsonl", 100, 250, 1, 400, 0, "jsonl"))
    assert _input_bytes(chunks) == [300, 300, 300, 150]


def test_a_rebuild_that_fails_deleting_the_old_shards_leaves_no_manifest(tmp_path, monkeypatch):
    """reset_store deletes manifest.json before any shard: a rebuild cut off among the deletions must
    not leave the old manifest vouching for shards that are gone, or replaced by the new run's."""
    write_store(tmp_path, {"train": [np.full(5, 7)] * 4, "val": [np.full(3, 9)]}, vocab_size=100)
    real = Path.unlink

    def shard_unlink_fails(self, *args, **kwargs):
        if self.suffix in (".bin", ".idx"):
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "unlink", shard_unlink_fails)
    with pytest.raises(PermissionError):
        reset_store(tmp_path)
    monkeypatch.undo()
    assert (tmp_path / "train-00000.bin").exists() and not (tmp_path / "manifest.json").exists()
    with pytest.raises(StoreError, match="not a finished token store"):
        TokenStore(tmp_path)


def test_a_refused_run_leaves_no_store_or_part_folder_behind(tmp_path, capsys):
    """An empty part-i-of-n folder would confuse --merge, an empty store folder the next run's checks; a
    mutation keeping the folders a refused run made passed every test (they refused before making any)."""
    data = write_jsonl(tmp_path / "a.jsonl", sentences(1, 3))
    argv = ["--data", str(data), "--out", str(tmp_path / "out"), "--name", "s", "--tokenizer",
            str(tmp_path / "none.json"), "--quiet"]
    assert main(argv) == 1
    assert not (tmp_path / "out" / "s").exists()
    assert main([*argv, "--shard", "0/2"]) == 1
    assert not (tmp_path / "out" / "s").exists()  # nor the store's folder the part was made in
    (tmp_path / "out" / "s").mkdir()
    assert main([*argv, "--shard", "0/2"]) == 1
    assert list((tmp_path / "out" / "s").iterdir()) == []  # a folder it did not make stays
    assert capsys.readouterr().err.count("none.json: no such file") == 3

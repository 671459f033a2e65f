"""`prepare`'s worker processes under faults: a worker killed mid-run, Ctrl-C, a tokenizer that changes
under the workers, a full disk. Each must end the run promptly with a one-line error, never hang, and
leave what a rerun resumes from."""

from __future__ import annotations

import gzip
import multiprocessing as mp
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

import pytest
from prepare_helpers import ROOT, build, sentences, store_files, tiny_tokenizer, write_jsonl

from common.files import sha256_file
from pipeline.chunks import Settings, init_worker
from pipeline.clean import CleanConfig
from pipeline.pool import _sigint_deferred, chunk_results
from pipeline.sources import plan_chunks
from pipeline.store import TokenStore
from pipeline.tokenizer import TokenizerError


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, Path, Path]:
    """~8 MB of JSON lines (~120 chunks of 64 KiB: seconds of work for 2 workers), its tokenizer, and
    the store an uninterrupted one-process run builds from them."""
    base = tmp_path_factory.mktemp("workers")
    tokenizer = tiny_tokenizer(base / "tokenizer")
    for k in range(4):
        write_jsonl(base / "corpus" / f"s{k}.jsonl", sentences(k, 4000))
    reference = build(base / "reference", tokenizer, data=[str(base / "corpus")], name="k", clean_preset="minimal",
                      workers=1)
    return base / "corpus", tokenizer, reference


def _command(corpus: Path, tokenizer: Path, out: Path) -> list[str]:
    return [sys.executable, "bin/prepare.py", "--data", str(corpus), "--name", "k", "--tokenizer", str(tokenizer),
            "--clean-preset", "minimal", "--chunk-bytes", "65536", "--quiet", "--out", str(out), "--workers", "2"]


def _group(leader: int) -> list[tuple[int, int]]:
    """(pid, parent pid) of every live process of the session `leader` started, itself included."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == leader and fields[0] != "Z":  # pgid, state (zombies left out)
            members.append((int(entry.name), int(fields[1])))
    return members


def _pool_workers(leader: int) -> list[int]:
    """The live pool workers of a run started in its own session: the group's members that are neither
    the run itself nor its direct children (the forkserver and resource tracker)."""
    return [pid for pid, ppid in _group(leader) if pid != leader and ppid != leader]


def _start_and_wait_for_work(cmd: list[str], work: Path) -> tuple[subprocess.Popen, list[int]]:
    """The run, once a few of its ~90 chunks are done. The whole run takes about a second and a half:
    at the lowest priority, it cannot finish while a loaded machine keeps this test from its next look
    (with two runs of the suite and other jobs at load ~9, a Ctrl-C once arrived after the end)."""
    proc = subprocess.Popen(cmd, cwd=ROOT, start_new_session=True, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: os.nice(19))
    deadline = time.monotonic() + 60
    while len(list(work.glob("*.chunk"))) < 4 or not _pool_workers(proc.pid):
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    return proc, _pool_workers(proc.pid)


@pytest.mark.parametrize("fault", ["worker killed", "ctrl-c"])
def test_run_stops_promptly_with_one_line_then_a_rerun_resumes(tmp_path, corpus, fault):
    data, tokenizer, reference = corpus
    cmd = _command(data, tokenizer, tmp_path)
    work = tmp_path / "k" / ".work"
    proc, workers = _start_and_wait_for_work(cmd, work)
    if fault == "worker killed":  # as the OOM killer would: the pool must notice, not wait forever
        os.kill(workers[0], signal.SIGKILL)
    else:  # a terminal's Ctrl-C reaches every process of the foreground group
        os.killpg(proc.pid, signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"prepare still running 60 s after the {fault}")
    if fault == "worker killed":
        assert proc.returncode == 1 and "a worker process died" in err and "rerun to resume" in err
    else:
        assert proc.returncode == 130 and "interrupted" in err
    assert "Traceback" not in err, err
    assert not (work.parent / "manifest.json").exists()
    deadline = time.monotonic() + 10
    while _pool_workers(proc.pid):  # no orphaned worker goes on
        assert time.monotonic() < deadline, _pool_workers(proc.pid)
        time.sleep(0.1)
    kept = {p.name: p.stat().st_mtime_ns for p in work.glob("*.chunk")}
    assert kept

    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert all((work / name).stat().st_mtime_ns == t for name, t in kept.items())  # reused, not redone
    assert store_files(work.parent) == store_files(reference)


def test_ctrl_c_twice_while_workers_hold_long_chunks_stops_at_once(tmp_path, corpus):
    """Waiting for the chunks in flight after a Ctrl-C, a second one interrupted the executor's own
    shutdown wait, after which its manager thread and the workers waited on each other forever."""
    data, tokenizer, _ = corpus
    whole = b"".join((data / f"s{k}.jsonl").read_bytes() for k in range(4))
    for k in range(2):  # compressed files are one chunk each: seconds of work in each worker
        (tmp_path / "gz").mkdir(exist_ok=True)
        (tmp_path / "gz" / f"g{k}.jsonl.gz").write_bytes(gzip.compress(whole * 2, compresslevel=1))
    cmd = _command(tmp_path / "gz", tokenizer, tmp_path)
    proc = subprocess.Popen(cmd, cwd=ROOT, start_new_session=True, stderr=subprocess.PIPE, text=True)
    work, deadline = tmp_path / "k" / ".work", time.monotonic() + 60
    while len(list(work.glob("*.tmp*"))) < 2:  # both workers are writing their chunk
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    for _ in range(2):
        os.killpg(proc.pid, signal.SIGINT)
        time.sleep(0.3)
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("prepare still running 30 s after a second Ctrl-C")
    assert proc.returncode == 130 and "interrupted" in err
    deadline = time.monotonic() + 10
    while _pool_workers(proc.pid):
        assert time.monotonic() < deadline, _pool_workers(proc.pid)
        time.sleep(0.1)


def test_kill_9_of_prepare_leaves_no_process_behind(tmp_path, corpus):
    """A kill -9 reaches no handler: the workers (and the forkserver) lived on, idle, holding ~100 MB
    each, since each worker holds the writing end of its own task queue and so never saw it close."""
    data, tokenizer, _ = corpus
    (tmp_path / "gz").mkdir()
    for k in range(2):  # one long chunk per worker
        (tmp_path / "gz" / f"g{k}.jsonl.gz").write_bytes(gzip.compress((data / f"s{k}.jsonl").read_bytes() * 4))
    proc = subprocess.Popen(_command(tmp_path / "gz", tokenizer, tmp_path), cwd=ROOT, start_new_session=True,
                            stderr=subprocess.DEVNULL)
    work, deadline = tmp_path / "k" / ".work", time.monotonic() + 60
    while len(list(work.glob("*.tmp*"))) < 2:  # both workers are busy
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 15
    while left := _group(proc.pid):
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"processes left 15 s after kill -9 of prepare: {left}")
        time.sleep(0.1)


def test_a_tokenizer_that_changed_under_the_workers_is_an_error_not_a_hang(tmp_path, corpus):
    data, tokenizer, _ = corpus
    chunks = plan_chunks([data / "s0.jsonl"], 65536)[:3]
    todo = [(pos, c, str(tmp_path / f"{pos}.chunk")) for pos, c in enumerate(chunks)]
    settings = Settings(str(tokenizer), sha256_file(tokenizer), CleanConfig.for_source("minimal"), "text", "text")
    assert [r.position for r in sorted(chunk_results(todo, settings, workers=2), key=lambda r: r.position)] == [0, 1, 2]
    with pytest.raises(TokenizerError, match="changed while prepare was running"):
        list(chunk_results(todo, replace(settings, tokenizer_sha256="0" * 64), workers=2))
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(TokenizerError, match="could not load the tokenizer"):
        list(chunk_results(todo, replace(settings, tokenizer_path=str(broken), tokenizer_sha256=sha256_file(broken)),
                      workers=2))


def test_a_worker_started_without_the_forkserver_ignores_ctrl_c_too(corpus):
    """Where there is no forkserver (`_context` falls back to spawn) a worker starts with Python's Ctrl-C
    handler, and only init_worker's own ignore keeps a terminal's Ctrl-C from ending every worker with a
    traceback. The forkserver hides its loss on Linux: a mutation dropping it passed every test."""
    _, tokenizer, _ = corpus
    settings = Settings(str(tokenizer), sha256_file(tokenizer), CleanConfig.for_source("minimal"), "text", "text")
    with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn"), initializer=init_worker,
                             initargs=(settings,)) as pool:
        assert pool.submit(signal.getsignal, signal.SIGINT).result(timeout=120) == signal.SIG_IGN


def test_a_consumer_that_stops_does_not_wait_for_the_chunks_in_flight(tmp_path, corpus):
    """Phase 2 stops at a bad file (or a Ctrl-C) while workers still hold chunks: they are killed, not
    waited for. A mutation that waited passed every test, whose chunks take a second; here a worker
    hangs in a chunk forever (opening a FIFO with no writer), as on a stuck network mount."""
    data, tokenizer, _ = corpus
    fifo = tmp_path / "stuck.jsonl"
    os.mkfifo(fifo)
    todo = [(pos, c, str(tmp_path / f"{pos}.chunk")) for pos, c in enumerate(plan_chunks([data / "s0.jsonl", fifo]))]
    settings = Settings(str(tokenizer), sha256_file(tokenizer), CleanConfig.for_source("minimal"), "text", "text")
    results = chunk_results(todo[:1] + todo[-1:], settings, workers=2)
    assert next(results).position == 0
    closing = threading.Thread(target=results.close, daemon=True)
    closing.start()
    closing.join(timeout=60)
    if closing.is_alive():
        with open(fifo, "wb"):  # a writer lets the stuck worker finish, so the pool can end
            pass
        closing.join()
        pytest.fail("the pool waited for a chunk still in flight")


def test_a_ctrl_c_while_the_pool_starts_is_held_then_raised():
    """A Ctrl-C while the executor starts its workers is held (a worker it never recorded would outlive
    us) and must then still stop the run: a mutation that dropped it passed every test."""
    reached_the_end = False
    with pytest.raises(KeyboardInterrupt), _sigint_deferred():
        os.kill(os.getpid(), signal.SIGINT)
        reached_the_end = True
    assert reached_the_end


def test_a_full_disk_is_one_line_naming_the_store(tmp_path, corpus):
    data, tokenizer, _ = corpus

    def limit_file_size() -> None:  # writes past 256 KiB fail with EFBIG (Python ignores SIGXFSZ)
        resource.setrlimit(resource.RLIMIT_FSIZE, (256 << 10, 256 << 10))

    proc = subprocess.run(_command(data, tokenizer, tmp_path), cwd=ROOT, capture_output=True, text=True,
                          preexec_fn=limit_file_size, timeout=120)
    assert proc.returncode == 1
    assert "File too large" in proc.stderr and str(tmp_path / "k") in proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    with pytest.raises(Exception, match="manifest"):
        TokenStore(tmp_path / "k")

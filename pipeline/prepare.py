"""`make prepare`: input files to a cleaned, deduplicated, split, memory-mapped token store.

    inputs --plan--> chunks --phase 1, all cores--> <store>/.work/<key>.chunk --phase 2, in plan order--> store

Phase 1 (pipeline/chunks.py) reads, cleans and tokenizes each chunk in a worker process and writes
the result to disk; phase 2 (pipeline/assemble.py) runs in this process while the workers go on,
consuming results strictly in plan order: exact dedup, train/val split, shard writing. The manifest
is written last, so a store without one is never mistaken for a finished store.

Why it is resumable: a chunk's result file is named by a hash of everything it depends on and
renamed into place only when complete, so a rerun after `kill -9` reuses every finished chunk and
redoes the rest; phase 2 is always redone from the results, which is cheap (memory speed) and keeps
the output byte-identical to an uninterrupted run. An identical rerun is a no-op: the manifest
records a fingerprint of the inputs (paths, sizes, mtimes) and of every option that shapes the output.
Only the files skipped as bad are read again, since mending one need not change its size or mtime.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import sys
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tqdm import tqdm

from common.config import parse_cli
from common.files import atomic_write_bytes, sha256_file
from pipeline.assemble import SPLIT_HASH, SPLIT_RULE, Assembler, PrepareError, reset_store, store_locked
from pipeline.chunks import (
    WORK_FORMAT,
    ChunkDone,
    Settings,
    chunk_key,
    load_result,
    result_meta,
)
from pipeline.config import PrepareConfig, check, clean_config, given_options, parse_shard, resolve_name
from pipeline.fast_encode import Encoder
from pipeline.merge import merge_parts, unmerge
from pipeline.paths import file_identities
from pipeline.pool import chunk_results
from pipeline.sources import BadFileError, Chunk, ReadStats, plan_chunks, read_chunk
from pipeline.store import FORMAT_VERSION, StoreError, TokenStore, read_manifest, write_manifest
from pipeline.tokenizer_step import (
    TOKENIZER,
    input_paths,
    install_tokenizer,
    refuse_foreign_store,
    run_cli,
    stores_using,
    tokenizer_source,
    unused_tokenizer_removed,
)

log = logging.getLogger("pipeline")


def fingerprint(cfg: PrepareConfig, paths: list[Path], settings: Settings, parts: int | None = None) -> str:
    """Hash of the inputs and of every option the store's bytes depend on (not workers or chunk size:
    the output does not depend on them, except which chunks a --shard part holds).

    With `parts`, the hash of the whole plan that each `--shard i/parts` job cuts its part from: the
    input list, chunk size and part count decide which chunks land in which part, so parts of one
    store must share it or a merge would hold some documents twice and others not at all."""
    blob = {"format": FORMAT_VERSION, "work": settings.digest(), "files": file_identities(paths),
            "val_fraction": cfg.val_fraction, "seed": cfg.seed, "shard_tokens": cfg.shard_tokens,
            "skip_bad_files": cfg.skip_bad_files, "shard": [parts, cfg.chunk_bytes] if parts else None}
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()


def _up_to_date(store: Path, fp: str, cfg: PrepareConfig) -> dict[str, Any] | None:
    """The manifest of a finished store built from exactly these inputs and options, else None; also
    None when a file it skipped as bad reads now (fixed in a way the fingerprint does not see, such as
    `chmod`, or the fault was passing), so that the rerun takes it in."""
    try:
        manifest = TokenStore(store).manifest
    except StoreError:
        return None
    if manifest.get("inputs_fingerprint") != fp:
        return None
    skipped = list(dict.fromkeys(bad["path"] for bad in manifest["stats"]["bad_files"]))
    if skipped:
        log.info("%s: reading again the %d file(s) it skipped as bad", store, len(skipped))
    for path in skipped:
        if _reads(path, cfg):
            log.warning("%s reads now (it was skipped as bad): rebuilding %s to take it in", path, store)
            return None
    return manifest


def _reads(path: str, cfg: PrepareConfig) -> bool:
    """Whether every record of `path` reads (bad records aside), as phase 1 would read it."""
    try:
        for chunk in plan_chunks([path], cfg.chunk_bytes):
            for _ in read_chunk(chunk, cfg.text_field, cfg.csv_column, ReadStats(quiet=True)):
                pass
    except BadFileError:
        return False
    return True


def _plan(paths: list[Path], cfg: PrepareConfig) -> tuple[list[Chunk], list[dict[str, Any]]]:
    """Chunks of every readable file, and the files that could not even be planned (when skipping)."""
    chunks, bad = [], []
    for p in paths:
        try:
            chunks += plan_chunks([p], cfg.chunk_bytes)
        except BadFileError as err:
            bad_file = {"path": err.path, "offset": err.offset, "error": err.message}
            if not cfg.skip_bad_files:
                raise _stop_at(bad_file) from None
            bad.append(bad_file)
    return chunks, bad


def _stop_at(bad_file: dict[str, Any]) -> PrepareError:
    """The error that stops the run at a bad file, planned or read: --skip-bad-files would skip it."""
    where = "" if bad_file["offset"] is None else f" (byte offset {bad_file['offset']})"
    return PrepareError(f"{bad_file['path']}{where}: {bad_file['error']}\n(--skip-bad-files records such files "
                        "in the manifest and goes on)")


def _human(n: float) -> str:
    for unit in ("", "K", "M", "G"):
        if abs(n) < 1000:
            return f"{n:.3g}{unit}"
        n /= 1000
    return f"{n:.3g}T"


def _input_bytes(chunks: list[Chunk]) -> list[int]:
    """Bytes of input each chunk covers: its byte range, or for parquet (ranges of row groups) an
    even share of the file. Progress and MB/s are counted in these."""
    per_file = Counter(c.path for c in chunks if c.fmt == "parquet")
    return [c.size // per_file[c.path] if c.fmt == "parquet" else c.end - c.start for c in chunks]


def _build(store: Path, chunks: list[Chunk], paths: list[Path], settings: Settings, vocab_size: int,
           cfg: PrepareConfig, bad_files: list[dict[str, Any]]) -> tuple[Assembler, dict[str, int]]:
    """Phase 1 in workers, phase 2 here as results arrive in plan order. Returns the filled assembler."""
    for tmp in (store / ".work").glob("*.tmp*"):
        tmp.unlink()  # left by a killed run: never part of any result
    metas = [result_meta(p) for p in paths]
    todo = [(pos, c, str(p)) for pos, (c, p, m) in enumerate(zip(chunks, paths, metas, strict=True)) if m is None]
    nbytes = _input_bytes(chunks)
    counts = {"chunks": len(chunks), "tokenized": len(todo), "bytes": sum(nbytes),
              "bytes_tokenized": sum(nbytes[pos] for pos, _, _ in todo)}
    asm = Assembler(store, vocab_size, cfg.val_fraction, cfg.seed, cfg.shard_tokens)
    for bad in bad_files:
        asm.add_bad_file(bad)
    done: dict[int, ChunkDone | None] = {pos: None for pos, m in enumerate(metas) if m is not None}
    # A file's chunks are consecutive in the plan. When bad files are skipped, a file is skipped whole
    # (and listed once), so phase 2 takes a file's chunks only once all of them are in: keeping the
    # chunks before a fault would make the store depend on --chunk-bytes.
    group = list(range(len(chunks)))  # the plan position where each chunk's group starts
    if cfg.skip_bad_files:
        for pos in range(1, len(chunks)):
            if chunks[pos].path == chunks[pos - 1].path:
                group[pos] = group[pos - 1]
    missing = Counter(group[pos] for pos in range(len(chunks)) if pos not in done)  # chunks yet to come, by group
    cursor = 0

    def drain() -> None:
        """Hand every whole group of results that is next in plan order to phase 2."""
        nonlocal cursor
        while cursor < len(chunks) and not missing[cursor]:
            end = cursor + 1
            while end < len(chunks) and group[end] == cursor:
                end += 1
            errors = [res.error for res in map(done.pop, range(cursor, end)) if res is not None and res.error]
            if errors:
                asm.add_bad_file(errors[0])
            else:
                for pos in range(cursor, end):
                    asm.add(load_result(paths[pos], metas[pos] or result_meta(paths[pos])))
            cursor = end

    cached = [m for m in metas if m is not None]
    bar = tqdm(total=counts["bytes"], initial=counts["bytes"] - counts["bytes_tokenized"], unit="B", unit_scale=True,
               unit_divisor=1024, desc=f"prepare {store.name}", file=sys.stderr, dynamic_ncols=True,
               disable=cfg.quiet or not sys.stderr.isatty())
    docs, tokens = sum(m["documents"] for m in cached), sum(m["tokens"] for m in cached)
    workers = cfg.workers or len(os.sched_getaffinity(0))
    with bar, contextlib.closing(chunk_results(todo, settings, workers)) as results:
        drain()
        for res in results:
            if res.error and not cfg.skip_bad_files:
                raise _stop_at(res.error)
            docs, tokens = docs + res.documents, tokens + res.tokens
            bar.update(nbytes[res.position])
            bar.set_postfix_str(f"{_human(docs)} docs, {_human(tokens)} tokens", refresh=False)
            done[res.position] = res
            missing[group[res.position]] -= 1
            drain()
    return asm, counts


def _prune_work(work: Path, keep: set[str], keep_work: bool) -> None:
    if not keep_work:
        shutil.rmtree(work, ignore_errors=True)
        return
    for f in work.glob("*.chunk"):
        if f.name not in keep:
            f.unlink()  # results of inputs or options that are gone: nothing will ask for them again


def prepare(cfg: PrepareConfig, given: frozenset[str] | None = None) -> Path:
    """Build (or confirm up to date) the store <out>/<name>/ or, with --shard, one part of it. `given`:
    the options the user gave (given_options), which a tokenizer already there is checked against;
    None, as for a config built in code, takes every option of `cfg` as given."""
    check(cfg, given or frozenset())
    root = Path(cfg.out) / resolve_name(cfg)
    if cfg.merge:
        return merge_parts(root)
    shard = parse_shard(cfg.shard)
    store = root / f"part-{shard[0]}-of-{shard[1]}" if shard else root
    paths = input_paths(cfg)
    created = [folder for folder in dict.fromkeys((store, root)) if not folder.exists()]  # the part's first
    store.mkdir(parents=True, exist_ok=True)
    try:
        # Locked from the start: a run that found the store busy only after training its tokenizer had
        # already replaced the file the busy job encodes with, and an up-to-date check or a tokenizer's
        # sha256 taken before the lock could be stale by the time the build began.
        with store_locked(store):
            # A --shard job would also replace the store its parts merge into.
            foreign = [refuse_foreign_store(cfg, built, paths) for built in {root, store}]
            src = tokenizer_source(cfg, root, paths, shard is not None, any(foreign), given)
            with unused_tokenizer_removed(src, root):
                return _prepare_locked(cfg, root, store, shard, paths, src)
    except BaseException:
        for folder in created:  # a refused run leaves no folder behind (an empty part-i-of-n would confuse --merge)
            _remove_if_unused(folder)
        raise


def _remove_if_unused(store: Path) -> None:
    with contextlib.suppress(OSError):
        if {p.name for p in store.iterdir()} <= {".lock"}:
            (store / ".lock").unlink(missing_ok=True)
            store.rmdir()


def _prepare_locked(cfg: PrepareConfig, root: Path, store: Path, shard: tuple[int, int] | None,
                    paths: list[Path], src: Path) -> Path:
    """prepare's work once it holds the store's lock and knows its tokenizer `src`."""
    tok = root / TOKENIZER
    started = time.perf_counter()  # the speed reported is the store's, not the tokenizer training's
    settings = Settings(str(tok), sha256_file(src), clean_config(cfg), cfg.text_field, cfg.csv_column)
    plan = fingerprint(cfg, paths, settings, shard[1] if shard else None)
    # A part's own fingerprint also says which part it is, so a part folder copied under another name is rebuilt.
    fp = hashlib.sha256(f"{plan} part {shard[0]}".encode()).hexdigest() if shard else plan
    current = _up_to_date(store, fp, cfg)
    # The encoder takes a second to load: an up-to-date store already says what the vocabulary is.
    encoder = None if current else Encoder(str(src))
    vocab = current["vocab_size"] if current else encoder.vocab_size
    if cfg.vocab_size and cfg.vocab_size != vocab:
        raise PrepareError(f"{src} has a vocabulary of {vocab}, not --vocab-size {cfg.vocab_size}: "
                           f"{_retrain_advice(cfg, root, src)}, or drop --vocab-size")
    if current:
        log.info("%s is up to date (same inputs and options); nothing to do", store)
        return store
    if read_manifest(store) is not None:
        log.warning("%s: replacing the store built there earlier (other inputs or options, or damaged); a training "
                    "run on it cannot resume on the new one (give other settings their own --name to keep both)", store)
    chunks, bad_files = _plan(paths, cfg)
    if shard:
        unmerge(root, store)
    reset_store(store)
    install_tokenizer(src, tok, settings.tokenizer_sha256)
    plan_files = {path: i for i, path in enumerate(dict.fromkeys(c.path for c in chunks))}
    if shard:
        chunks = [c for pos, c in enumerate(chunks) if pos % shard[1] == shard[0]]
    work = store / ".work"
    work.mkdir(exist_ok=True)
    results = [work / f"{chunk_key(c, settings.digest())}.chunk" for c in chunks]
    asm, counts = _build(store, chunks, results, settings, encoder.vocab_size, cfg, bad_files)
    splits, stats = asm.finish()
    manifest = {
        "format_version": FORMAT_VERSION, "dtype": asm.writers["train"].dtype.name,
        "vocab_size": encoder.vocab_size, "bos_id": encoder.bos_id,
        "tokenizer": {"path": os.path.relpath(tok, store), "sha256": settings.tokenizer_sha256},
        "splits": splits, "sources": [{"path": p, "size": s} for p, s in asm.sources.items()],
        "clean": asdict(settings.clean), "text_field": cfg.text_field, "csv_column": cfg.csv_column,
        "stats": stats,
        "split": {"rule": SPLIT_RULE, "hash": SPLIT_HASH, "val_fraction": cfg.val_fraction, "seed": cfg.seed},
        "work_format": WORK_FORMAT, "inputs_fingerprint": fp,
    }
    if shard:
        # Merge needs the parts' document hashes to count duplicates across parts (8 bytes/doc).
        atomic_write_bytes(store / "doc_hashes.bin", asm.seen.sorted().astype("<u8").tobytes())
        # plan_bad_files: how many of stats.bad_files (the first ones) failed at planning, before
        # the plan was cut into parts. Every part lists them; the merge keeps one copy.
        # source_order: each source's place among the plan's files, for the merge to list them
        # in the order one job would. shard_tokens: how the merge packs the val split it copies.
        manifest["part"] = {"index": shard[0], "count": shard[1], "chunk_bytes": cfg.chunk_bytes,
                            "shard_tokens": cfg.shard_tokens,
                            "doc_hashes": "doc_hashes.bin", "plan_fingerprint": plan,
                            "plan_bad_files": len(bad_files),
                            "source_order": [plan_files[path] for path in asm.sources]}
    write_manifest(store, manifest)
    _prune_work(work, {p.name for p in results}, cfg.keep_work)
    print(summary(store, manifest, asm, counts, time.perf_counter() - started))
    return store


def _retrain_advice(cfg: PrepareConfig, root: Path, src: Path) -> str:
    """How to get a tokenizer of --vocab-size. `make tokenizer` refuses to replace the one a finished store
    (or part) uses unless given --overwrite, so advice without the flag would only lead to that refusal."""
    if cfg.tokenizer:
        return "give a tokenizer of that size"
    if stores_using(root, src):
        return ("retrain it with `make tokenizer` (same DATA and NAME, VOCAB=..., ARGS=--overwrite: a finished "
                "store uses it, which this command then rebuilds)")
    return "retrain it with `make tokenizer` (same DATA and NAME, VOCAB=...)"


def summary(store: Path, manifest: dict[str, Any], asm: Assembler, counts: dict[str, int], seconds: float) -> str:
    """The end-of-run table: cleaning and dedup per rule, tokens per split, faults, speed."""
    lines = [f"store {store}  ({manifest['dtype']}, vocab {manifest['vocab_size']})", asm.clean.format_table()]
    for split, info in manifest["splits"].items():
        lines.append(f"{split:>5}: {info['documents']:,} documents, {info['tokens']:,} tokens, "
                     f"{info['text_bytes']:,} text bytes, {len(info['shards'])} shard(s)")
    if asm.read.bad_records or asm.read.invalid_utf8:
        kinds = ", ".join(f"{k} {n:,}" for k, n in sorted(asm.read.bad_records.items()))
        lines.append(f"bad records skipped: {kinds or 'none'}; records with invalid UTF-8 repaired: "
                     f"{asm.read.invalid_utf8:,}")
    lines += [f"bad file skipped: {b['path']}: {b['error']}" for b in asm.bad_files]
    if not any(info["documents"] for info in manifest["splits"].values()):
        why = ("the table above says which rules dropped them; --clean-preset minimal keeps all but empty ones"
               if asm.clean.documents_in else "no record held a usable text: see the bad records and files above")
        lines.append(f"warning: the store is empty: no document was kept ({why})")
    mb, reused = counts["bytes"] / 1e6, counts["chunks"] - counts["tokenized"]
    done = counts["bytes_tokenized"] / 1e6  # the rate of this run's own work, not of chunks found finished
    rate = f"{done / max(seconds, 1e-9):.1f} MB/s"
    tail = f"{reused} finished by an earlier run; {done:,.1f} MB tokenized now at {rate}" if reused else rate
    chunks = f"{counts['chunks']} chunk{'s' * (counts['chunks'] != 1)}"
    lines.append(f"{mb:,.1f} MB of input in {seconds:.1f} s, {chunks} ({tail})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """bin/prepare.py: exit 0 when the store is built, 1 on a bad input file or store, 2 on bad options."""
    argv = sys.argv[1:] if argv is None else argv
    cfg = parse_cli(PrepareConfig, argv, prog="bin/prepare.py", description=__doc__.split("\n\n")[0])
    given = given_options(argv)
    return run_cli(cfg, lambda: prepare(cfg, given), "finished chunks are kept, so the same command resumes")

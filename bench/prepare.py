"""Pipeline benchmark: end-to-end `make prepare` against the encoder's limit and the seed's way.

    .venv/bin/python bench/prepare.py [--mb 220] [--workers N] [--repeat 3] [--out data_cache/bench-prepare]

Corpus: --mb MB of web-like JSON lines (>= 200 for the issue's target), generated deterministically
into <out>/corpus/: documents of 1-30 paragraphs drawn from the plays' speeches (each joined into
one prose line) and, when ../shared/corpora exists, its web texts (the report says which), in 8
files shaped like crawl shards (`text` not the first key). It is kept across runs and rebuilt when
--mb or the web texts' presence differs from the recipe it was made with; the tokenizer (vocab
16384, the default) is then trained anew on it, outside any timing.

Measured in one run, per cleaning preset (web: C4 + Gopher rules; minimal: normalisation only,
which isolates the pipeline's own overhead), all rates in MB of input JSON per second:
  prepare  `bin/prepare.py --data <corpus>` in a subprocess, from scratch (no .work), all cores;
           peak RSS sampled over its whole process tree every 50 ms, and its CPU seconds.
  (a)      the limit: the fastest exact encoder (`Encoder.encode_to_array`) alone, on all cores, on
           exactly the texts prepare encodes with that preset (duplicates included: prepare drops
           them after encoding), held in memory by forked workers beforehand; its time is converted
           to input MB/s with the same corpus size.
  (b)      the seed's way: one process reads everything, `full_clean`s it and encodes one document
           at a time with HF `tokenizers`, on the first corpus file (~1/8 of it: rates compare).
           The seed cleaned with the web rules; (b) cleans with the row's preset, since a `minimal`
           prepare set against a (b) that runs the web rules would count the rules it skips as
           its own gain.
The three take turns --repeat times, so drift in the machine's speed hits them alike: medians, with
the best run in brackets. Wall ratios are what a user sees on this machine at its load; CPU ratios
compare CPU seconds as if prepare's spread perfectly over its workers, which its serial parts
(start-up, planning, phase 2) do not: upper bounds on what an idle machine would show. Each store
prepare builds is checked against (a)'s texts: as many documents before dedup, and after it the
same documents, tokens and text bytes (exit status 1 and a MISMATCH line if not). Then single-core
rates of each stage a worker runs (the profile that explains the ratios). Targets (issue 2):
prepare >= 0.90 x (a), >= 5 x (b) with the web preset, peak RSS < 2 GB. Not a test.
"""

from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing as mp
import os
import platform
import random
import resource
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[0] = str(ROOT)  # run as a script: import the repository's packages, not bench/*

from common.cli import number  # noqa: E402
from pipeline.clean import PRESETS, CleanConfig, clean_text, doc_hash, full_clean  # noqa: E402
from pipeline.fast_encode import Encoder  # noqa: E402
from pipeline.sources import iter_texts, plan_chunks, read_chunk, shakespeare_plays  # noqa: E402

WEB = ROOT.parent / "shared" / "corpora"
FILES = 8


def _paragraphs() -> list[str]:
    """Prose-like paragraphs: each speech of the plays on one line, and the web texts' lines."""
    out = []
    for scene, _ in iter_texts(shakespeare_plays()):
        for speech in scene.split("\n\n")[1:]:
            lines = [ln.strip() for ln in speech.split("\n")[1:] if ln.strip()]
            if len(lines) >= 2:
                out.append(" ".join(lines))
    if WEB.is_dir():
        for text, _ in iter_texts([WEB]):
            out += [ln.strip() for ln in text.split("\n") if len(ln.split()) >= 8]
    return out


def make_corpus(dest: Path, mb: int) -> tuple[list[Path], bool, bool]:
    """Deterministic: the same files (and bytes) for the same recipe (size, web texts or not), kept
    across runs. Returns (files, whether the web texts are in them, whether it was built now)."""
    paths = [dest / f"shard-{i:02d}.jsonl" for i in range(FILES)]
    # Beside the corpus, not in it: prepare would read a .json file there as input.
    recipe, marker = {"mb": mb, "files": FILES, "web_texts": WEB.is_dir()}, dest.with_name(f"{dest.name}-recipe.json")
    # Any corpus of at least --mb MB used to be kept, so `--mb 5` benchmarked a 220 MB one as 5 MB.
    if all(p.is_file() for p in paths) and marker.is_file() and json.loads(marker.read_text()) == recipe:
        return paths, recipe["web_texts"], False
    marker.unlink(missing_ok=True)
    dest.mkdir(parents=True, exist_ok=True)
    paras, rng = _paragraphs(), random.Random(0)
    per_file = mb * 10**6 // FILES + 1
    for i, path in enumerate(paths):
        size, n = 0, 0
        with open(path.with_suffix(".tmp"), "w") as f:
            while size < per_file:
                k = max(1, min(30, int(rng.lognormvariate(1.5, 0.8))))
                text = "\n\n".join(rng.choice(paras) for _ in range(k))
                line = json.dumps({"id": f"{i}-{n}", "source": "bench", "text": text,
                                   "metadata": {"url": f"https://example.org/{i}/{n}", "length": len(text)}})
                f.write(line + "\n")
                size, n = size + len(line) + 1, n + 1
        path.with_suffix(".tmp").rename(path)
    marker.write_text(json.dumps(recipe))
    return paths, recipe["web_texts"], True


class TreeWatch(threading.Thread):
    """Samples a process and all its descendants every 50 ms (Linux /proc): peak resident memory, and
    CPU seconds used (other load on the machine stretches wall time, much less the CPU time)."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.peak_total, self.peak_one, self.stop = pid, 0, 0, threading.Event()
        self.cpu: dict[int, float] = {}

    def _tree(self) -> list[int]:
        parents = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat") as f:
                        parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    pass
        tree, frontier = [self.pid], [self.pid]
        while frontier:
            frontier = [p for p, pp in parents.items() if pp in frontier]
            tree += frontier
        return tree

    def run(self) -> None:
        page, tick = os.sysconf("SC_PAGE_SIZE"), os.sysconf("SC_CLK_TCK")
        while not self.stop.wait(0.05):
            rss = []
            for pid in self._tree():
                try:
                    with open(f"/proc/{pid}/statm") as f:
                        rss.append(int(f.read().split()[1]) * page)
                    with open(f"/proc/{pid}/stat") as f:
                        utime, stime = f.read().rsplit(")", 1)[1].split()[11:13]
                    self.cpu[pid] = (int(utime) + int(stime)) / tick
                except (OSError, IndexError, ValueError):
                    pass
            self.peak_total, self.peak_one = max(self.peak_total, sum(rss)), max([self.peak_one, *rss])

    @property
    def cpu_seconds(self) -> float:
        return sum(self.cpu.values())


def run_prepare(corpus: Path, out: Path, workers: int, preset: str) -> tuple[float, TreeWatch, str, dict]:
    """A from-scratch build (no store, no .work) in a subprocess, as `make prepare` runs it. Returns
    (wall seconds, its process tree's watch, its summary, the store's manifest)."""
    store = out / "bench"
    for p in [*store.glob("*.bin"), *store.glob("*.idx"), store / "manifest.json"]:
        p.unlink(missing_ok=True)
    shutil.rmtree(store / ".work", ignore_errors=True)
    cmd = [sys.executable, str(ROOT / "bin" / "prepare.py"), "--data", str(corpus), "--name", "bench",
           "--out", str(out), "--quiet", "--workers", str(workers), "--clean-preset", preset]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    sampler = TreeWatch(proc.pid)
    sampler.start()
    stdout, _ = proc.communicate()
    seconds = time.perf_counter() - started
    sampler.stop.set()
    if proc.returncode:
        raise SystemExit(f"prepare failed ({proc.returncode}): {' '.join(cmd)}")
    return seconds, sampler, stdout, json.loads((store / "manifest.json").read_text())


# --- (a): the encoder alone ---------------------------------------------------------------------
_STATE: dict = {}


def _clean_chunk(job: tuple) -> list[str]:
    chunk, preset = job
    cfg = CleanConfig.for_source(preset)
    return [t for t in (clean_text(text, cfg)[0] for text, _ in read_chunk(chunk)) if t]


def _init_encoder(tokenizer: str) -> None:
    _STATE["encoder"] = Encoder(tokenizer)


def _encode(span: tuple[int, int]) -> tuple[float, int]:
    """(CPU seconds, tokens of the texts that survive dedup) of one span of texts."""
    cpu = time.process_time()
    _, lengths = _STATE["encoder"].encode_to_array(_STATE["texts"][span[0] : span[1]])
    seconds = time.process_time() - cpu
    return seconds, int(lengths[_STATE["first"][span[0] : span[1]]].sum())


class EncoderLimit:
    """(a): the pure encoder on all cores, on the texts prepare encodes with `preset`, cleaned once and
    held by forked workers (children inherit them: nothing is copied while timing); `run()` times one
    pass. Also counts what prepare's store must hold after dedup, to check it against."""

    def __init__(self, corpus: list[Path], tokenizer: Path, workers: int, preset: str):
        ctx = mp.get_context("fork")
        with ctx.Pool(workers) as pool:
            jobs = [(c, preset) for c in plan_chunks(corpus, 16 << 20)]
            texts = [t for part in pool.map(_clean_chunk, jobs) for t in part]
        # Dedup as prepare does it: the first text of each doc_hash (duplicates encode alike, so which
        # copy is kept does not change the counts).
        _, first_at = np.unique(np.fromiter(map(doc_hash, texts), np.uint64, len(texts)), return_index=True)
        first = np.zeros(len(texts), dtype=bool)
        first[first_at] = True
        sizes = np.fromiter((len(t.encode()) for t in texts), np.int64, len(texts))
        self.documents, self.text_bytes = len(texts), int(sizes.sum())
        self.distinct, self.distinct_bytes = int(first.sum()), int(sizes[first].sum())
        self.distinct_tokens = 0
        _STATE.update(texts=texts, first=first)
        self.spans, start, size = [], 0, 0
        for i, t in enumerate(texts):
            size += len(t)
            if size >= 1 << 20 or i == len(texts) - 1:
                self.spans.append((start, i + 1))
                start, size = i + 1, 0
        self.pool = ctx.Pool(workers, _init_encoder, (str(tokenizer),))
        self.pool.map(_encode, [(0, 1)] * workers)  # warm: every worker has loaded its encoder

    def run(self) -> tuple[float, float]:
        """(wall seconds, CPU seconds) of one pass over every text."""
        started = time.perf_counter()
        done = list(self.pool.imap_unordered(_encode, self.spans))
        seconds = time.perf_counter() - started
        self.distinct_tokens = sum(tokens for _, tokens in done)
        return seconds, sum(cpu for cpu, _ in done)

    def close(self) -> None:
        self.pool.terminate()
        self.pool.join()
        _STATE.clear()


def check_store(manifest: dict, limit: EncoderLimit) -> str | None:
    """None when prepare's store holds what (a)'s texts say it must, else what differs."""
    stats, splits = manifest["stats"], manifest["splits"].values()
    pairs = {  # what the store says, what (a)'s texts say
        "documents before dedup": (stats["documents_kept"] + stats["dropped"].get("duplicate", 0), limit.documents),
        "documents": (sum(s["documents"] for s in splits), limit.distinct),
        "tokens (a BOS per document)": (sum(s["tokens"] for s in splits), limit.distinct_tokens + limit.distinct),
        "text bytes": (sum(s["text_bytes"] for s in splits), limit.distinct_bytes),
    }
    diff = [f"{what}: store {got:,}, (a) {want:,}" for what, (got, want) in pairs.items() if got != want]
    return "; ".join(diff) or None


def seed_way(path: Path, hf, preset: str) -> tuple[float, float]:
    """(wall, CPU) seconds for one process to read `path`, `full_clean` it with `preset` and encode one
    document at a time with `hf` (a loaded HF tokenizers.Tokenizer)."""
    started, cpu = time.perf_counter(), time.process_time()
    for text in full_clean([path], CleanConfig.for_source(preset)):
        hf.encode(text)
    return time.perf_counter() - started, time.process_time() - cpu


def stage_rates(path: Path, tokenizer: Path) -> dict[str, float]:
    """Single-core MB/s (of input JSON, per CPU second) of each stage a worker runs: the profile."""
    mb = path.stat().st_size / 1e6
    # Loaded before the clock starts: a worker loads its encoder once, not per chunk.
    fast, hf = Encoder(str(tokenizer)), Encoder(str(tokenizer), engine="hf")
    rates, clock = {}, time.process_time()  # CPU time: other load on the machine does not count

    def lap(name: str) -> None:
        nonlocal clock
        now = time.process_time()
        rates[name] = mb / (now - clock)
        clock = now

    raw = [t for c in plan_chunks([path]) for t, _ in read_chunk(c)]
    lap("read + parse JSON")
    for preset in ("minimal", "web"):
        cfg = CleanConfig.for_source(preset)
        texts = [t for t in (clean_text(x, cfg)[0] for x in raw) if t]
        lap(f"clean ({preset})")
    [doc_hash(t) for t in texts]
    lap("doc_hash")
    fast.encode_to_array(texts)
    lap("encode (tiktoken engine)")
    hf.encode_to_array(texts)
    lap("encode (HF engine, batch)")
    return rates


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    # Checked before the corpus and tokenizer are made: a bad preset failed in (a)'s pool after them,
    # --repeat 0 with an UnboundLocalError after cleaning the corpus, --workers 0 in multiprocessing.
    ap.add_argument("--mb", type=number(int, 1), default=220, help="corpus size in MB (>= 200 for the issue's target)")
    ap.add_argument("--workers", type=number(int, 1), default=len(os.sched_getaffinity(0)))
    ap.add_argument("--out", type=Path, default=ROOT / "data_cache" / "bench-prepare")
    ap.add_argument("--presets", nargs="+", choices=PRESETS, default=["web", "minimal"],
                    help="cleaning presets to run prepare with")
    ap.add_argument("--repeat", type=number(int, 1), default=3, help="turns of prepare, (a) and (b): medians and bests")
    args = ap.parse_args()
    corpus_dir = args.out / "corpus"
    corpus, web, rebuilt = make_corpus(corpus_dir, args.mb)
    if rebuilt:
        shutil.rmtree(args.out / "bench", ignore_errors=True)  # its tokenizer was trained on the old corpus
    mb = sum(p.stat().st_size for p in corpus) / 1e6
    tokenizer = args.out / "bench" / "tokenizer.json"
    if not tokenizer.is_file():
        cmd = [sys.executable, str(ROOT / "bin" / "tokenizer.py"), "--data", str(corpus_dir), "--name", "bench",
               "--out", str(args.out), "--tokenizer-sample-bytes", str(64 << 20)]
        if subprocess.run(cmd).returncode:  # it has said why (too small a --mb for its vocabulary, say)
            raise SystemExit(f"tokenizer training failed: {' '.join(cmd)}")
    print(f"corpus: {mb:.1f} MB in {len(corpus)} files; {args.workers} workers", file=sys.stderr)
    load_before = os.getloadavg()[1]  # other processes on the machine make every figure slower
    from tokenizers import Tokenizer

    hf = Tokenizer.from_file(str(tokenizer))
    rows, peak = [], None
    for preset in args.presets:
        limit = EncoderLimit(corpus, tokenizer, args.workers, preset)
        runs: dict[str, list[tuple[float, float]]] = {"prepare": [], "a": [], "b": []}
        mismatches = set()
        try:
            for _ in range(args.repeat):
                seconds, watch, summary, manifest = run_prepare(corpus_dir, args.out, args.workers, preset)
                print(summary, file=sys.stderr)
                runs["prepare"].append((seconds, watch.cpu_seconds))
                peak = watch if peak is None or watch.peak_total > peak.peak_total else peak
                runs["a"].append(limit.run())
                runs["b"].append(seed_way(corpus[0], hf, preset))
                mismatches.add(check_store(manifest, limit))
        finally:
            limit.close()
        rows.append((preset, runs, manifest, limit, sorted(mismatches - {None})))
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    stages = stage_rates(corpus[0], tokenizer)
    self_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    report(args, mb, len(corpus), web, load_before, rows, corpus[0].stat().st_size / 1e6, stages,
           (peak.peak_total, peak.peak_one, children, self_rss))
    return 1 if any(row[-1] for row in rows) else 0


def report(args, mb, files, web, load_before, rows, b_mb, stages, rss) -> None:
    """Markdown for bench/RESULTS.md. Wall ratios are what a user sees on this machine at this load.
    CPU ratios compare CPU seconds, as if prepare's spread perfectly over its workers: its serial
    parts (start-up, planning, phase 2) do not, so they are upper bounds on an idle machine's ratios."""
    command = (f".venv/bin/python bench/prepare.py --mb {args.mb} --workers {args.workers} "
               f"--presets {' '.join(args.presets)} --repeat {args.repeat}")
    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
          f"{datetime.date.today()}; command: {command}")
    print(f"5-minute load average before/after: {load_before:.1f} / {os.getloadavg()[1]:.1f}")
    what = f"the plays' speeches and the {WEB} web texts" if web else f"the plays' speeches only ({WEB} absent)"
    print(f"corpus: {mb:.1f} MB of JSON lines in {files} files, from {what}; MB/s are MB of that input per second")
    print(f"prepare, (a) and (b) took turns {args.repeat} times: medians, with the best run in brackets\n")
    print("| run | wall s | MB/s | CPU s | vs (a): wall, CPU (upper bound) | vs (b): wall, CPU (upper bound) |")
    print("|---|---:|---:|---:|---|---|")
    scale = mb / b_mb  # (b) ran on one file: its times scaled to the whole corpus
    checks = []
    for preset, runs, manifest, limit, mismatches in rows:
        med = {k: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v)) for k, v in runs.items()}
        best = {k: min(w for w, _ in v) for k, v in runs.items()}
        (t_p, cpu_p), (t_a, cpu_a), (t_b, cpu_b) = med["prepare"], med["a"], med["b"]
        splits = manifest["splits"].values()
        store = (f"store: {sum(s['text_bytes'] for s in splits) / 1e6:.0f} MB of text, "
                 f"{sum(s['tokens'] for s in splits) / 1e6:.1f}M tokens after dedup")
        # An idle machine would run prepare in no less than CPU / workers seconds; (b) is one process.
        print(f"| prepare, `--clean-preset {preset}` ({store}) | {t_p:.1f} ({best['prepare']:.1f}) | {mb / t_p:.2f} "
              f"| {cpu_p:.1f} | **{t_a / t_p:.2f}** ({best['a'] / best['prepare']:.2f}), **{cpu_a / cpu_p:.2f}** "
              f"| **{t_b * scale / t_p:.1f}** ({best['b'] * scale / best['prepare']:.1f}), "
              f"**{cpu_b * scale / (cpu_p / args.workers):.1f}** |")
        print(f"| (a) encoder alone on the same {limit.text_bytes / 1e6:.0f} MB of cleaned text (before dedup), "
              f"all cores | {t_a:.1f} ({best['a']:.1f}) | {mb / t_a:.2f} | {cpu_a:.1f} | 1.00 | |")
        print(f"| (b) seed's way (`{preset}` cleaning, HF per document) on {b_mb:.0f} MB, 1 core "
              f"| {t_b:.1f} ({best['b']:.1f}) | {b_mb / t_b:.2f} | {cpu_b:.1f} | | 1.0 |")
        checks += [f"MISMATCH, `{preset}`: {m}" for m in mismatches] or [
            f"store check, `{preset}`: every run's store matches (a)'s texts: {limit.documents:,} documents before "
            f"dedup; after it {limit.distinct:,} documents, {limit.distinct_tokens + limit.distinct:,} tokens "
            f"(a BOS each), {limit.distinct_bytes:,} text bytes"]
    print(f"\nCPU ratios are upper bounds: CPU seconds compared as if prepare's spread perfectly over its "
          f"{args.workers} workers; its serial parts (start-up, planning, phase 2) do not.")
    print("\n".join(checks))
    total, one, children, own = (r / 2**20 for r in rss)
    print("\nTargets: prepare >= 0.90 x (a), >= 5 x (b) with the web preset, peak RSS < 2 GB.")
    print(f"peak RSS of prepare: process tree {total:.0f} MiB, largest process {one:.0f} MiB (getrusage's largest "
          f"child of this benchmark, (a)'s workers included: {children:.0f} MiB); this benchmark's own process, "
          f"holding (a)'s texts: {own:.0f} MiB.")
    print("\nOne core, per stage of a worker (MB of input JSON per CPU second, on the first corpus file):\n")
    print("| stage | MB/s |\n|---|---:|")
    for name, rate in stages.items():
        print(f"| {name} | {rate:.1f} |")


if __name__ == "__main__":
    raise SystemExit(main())

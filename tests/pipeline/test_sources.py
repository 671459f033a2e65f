import json
import logging
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from read_helpers import FORMATS, read_all, texts_of

from pipeline import readers, sources
from pipeline.sources import (
    BadFileError,
    ReadStats,
    expand_paths,
    iter_texts,
    plan_chunks,
    play_scenes,
    read_chunk,
    resolve_source,
)

CC_EN_HEAD = Path(__file__).resolve().parents[2] / ".." / "shared" / "corpora" / "cc_en_head"


# --- formats ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", FORMATS)
def test_every_format_reads_back_the_texts(write_texts, sample_texts, name):
    path = write_texts(name, sample_texts)
    records, stats = read_all(path)
    assert [t for t, _ in records] == sample_texts
    assert stats.records == len(sample_texts) and not stats.bad_records and not stats.invalid_utf8
    assert all(where.startswith(f"{path}:") for _, where in records)


@pytest.mark.parametrize("name", ["b.jsonl", "b.json", "b.csv", "b.parquet"])
def test_custom_text_field(write_texts, name):
    path = write_texts(name, ["x", "y"], key="body")
    assert texts_of(path, text_field="body", csv_column="body") == ["x", "y"]


def test_locations_are_lines_or_rows(tmp_path, write_texts):
    jsonl = tmp_path / "l.jsonl"
    jsonl.write_text('{"text": "a"}\n\n{"text": "b"}\n')
    assert [w for _, w in read_all(jsonl)[0]] == [f"{jsonl}:1", f"{jsonl}:3"]
    csv_path = write_texts("c.csv", ["one\ntwo\nthree", "four"])
    assert [w for _, w in read_all(csv_path)[0]] == [f"{csv_path}:2", f"{csv_path}:5"]
    array = tmp_path / "a.json"
    array.write_text('[\n {"text": "a"},\n\n {"text": "b\\nc"}]')
    assert [w for _, w in read_all(array)[0]] == [f"{array}:2", f"{array}:4"]
    parquet = write_texts("p.parquet", ["a", "b", "c"])
    assert [w for _, w in read_all(parquet)[0]] == [f"{parquet}:{i}" for i in (1, 2, 3)]


def test_json_lines_in_a_json_file_and_concatenated_zstd_frames(tmp_path):
    lines = tmp_path / "lines.json"
    lines.write_text('{"text": "a"}\n{"text": "b"}\n')
    assert texts_of(lines) == ["a", "b"]
    zst = tmp_path / "multi.jsonl.zst"
    frame = zstandard.ZstdCompressor().compress
    zst.write_bytes(frame(b'{"text": "a"}\n') + frame(b'{"text": "b"}\n'))
    assert texts_of(zst) == ["a", "b"]


# --- paths and named sources ----------------------------------------------------------------------


def test_shakespeare_source_is_scenes_of_38_plays():
    plays = resolve_source("shakespeare")
    assert len(plays) == 38 and plays == sorted(plays)
    stats = ReadStats()
    records = [r for play in plays for r in read_all(play, stats=stats)[0]]
    assert 700 <= len(records) <= 850 and not stats.bad_records
    texts = [t for t, _ in records]
    assert not any("**" in t or "_" in t or "  \n" in t or "\\[" in t for t in texts)
    dream = texts[0]  # sorted paths: comedies/a-midsummer-night-s-dream.md comes first
    assert dream.startswith("A Midsummer Night's Dream, ACT I, SCENE I. Athens. The palace of THESEUS.\n\n")
    assert "Enter THESEUS, HIPPOLYTA, PHILOSTRATE, and Attendants\n\nTHESEUS:\nNow, fair Hippolyta" in dream
    assert "Draws on apace; four happy days bring in\n" in dream


def test_play_scenes_classifies_headings_by_text():
    md = [
        "# The Play", "", "## ACT I", "", "### SCENE I. A heath.", "", "_Enter A_", "",
        "**A**  ", "Verse one,  ", "verse two.", "", "# INTERMISSION", "", "#### ACT II", "",
        "_Enter GOWER_", "", "### PROLOGUE", "", "**GOWER**  ", "Hear me _\\[Aside]_  ",
    ]  # the heading levels and the two-space line breaks are as irregular as in the real plays
    scenes = list(play_scenes([line + "\n" for line in md], "fallback"))
    assert scenes == [
        ("The Play, ACT I, SCENE I. A heath.\n\nEnter A\n\nA:\nVerse one,\nverse two.", 5),
        ("The Play, ACT II, PROLOGUE\n\nEnter GOWER\n\nGOWER:\nHear me [Aside]", 17),
    ]
    assert list(play_scenes(["no headings\n", "at all\n"], "notes")) == [("notes\n\nno headings\nat all", 1)]
    # Only a level-1 heading is a title (a mutation taking any first heading passed every test): a play
    # opening on its first act is titled by its file name, and the act stays the act.
    untitled = ["## ACT I\n", "### SCENE I. Elsinore.\n", "Who's there?\n"]
    assert list(play_scenes(untitled, "hamlet")) == [("hamlet, ACT I, SCENE I. Elsinore.\n\nWho's there?", 2)]


def test_unknown_source():
    with pytest.raises(ValueError, match="unknown source 'nope'; known: shakespeare, redpajama"):
        resolve_source("nope")


# --- chunking -------------------------------------------------------------------------------------


def test_chunked_reads_equal_one_read(tmp_path):
    lines = [json.dumps({"text": "x" * (i * 7 % 23), "i": i}) + "\n" for i in range(60)]
    lines[10] = "\n"  # blank lines count for line numbers but yield nothing
    lines[20] = "{bad json\n"
    path = tmp_path / "big.jsonl"
    data = "".join(lines).encode()
    path.write_bytes(data)
    whole, whole_stats = read_all(path)
    first = len(lines[0])
    sizes = [1, 2, 7, 13, first - 1, first, first + 1, 100, len(data) - 1, len(data), len(data) + 5]
    for chunk_bytes in sizes:
        chunks = plan_chunks([path], chunk_bytes)
        assert [c.index for c in chunks] == list(range(len(chunks)))
        assert chunks[0].start == 0 and chunks[-1].end == len(data)
        for a, b in zip(chunks, chunks[1:], strict=False):
            assert a.end == b.start and data[b.start - 1 : b.start] == b"\n"
            assert b.first_line == data[: b.start].count(b"\n") + 1
        split, split_stats = read_all(path, chunk_bytes)
        assert split == whole, chunk_bytes
        assert split_stats.to_dict() == whole_stats.to_dict()
    assert plan_chunks([path], first)[1].start == first  # nominal offset right after a "\n"
    assert len(plan_chunks([path], 1)) == 60  # one chunk per line at the extreme
    assert plan_chunks([path], 100) == plan_chunks([path], 100)


def test_a_bom_does_not_shift_the_chunk_boundaries(tmp_path):
    """The BOM is dropped from the text but its 3 bytes still count: otherwise the first chunk runs
    3 bytes behind and also reads the next chunk's first line (a duplicate record)."""
    lines = [json.dumps({"text": f"line {i} " + "x" * (i % 40)}) + "\r\n" for i in range(400)]
    path = tmp_path / "bom.jsonl"
    path.write_bytes(readers.BOM + "".join(lines).encode())
    whole, _ = read_all(path)
    assert [where for _, where in whole] == [f"{path}:{i + 1}" for i in range(400)]
    for chunk_bytes in (50, 1000, 4096):
        assert read_all(path, chunk_bytes)[0] == whole, chunk_bytes


def test_only_plain_json_lines_and_parquet_split(tmp_path, write_texts, sample_texts):
    for name in ["a.jsonl.gz", "a.jsonl.zst", "a.json", "a.csv"]:
        path = write_texts(name, sample_texts * 50)
        assert len(plan_chunks([path], 16)) == 1, name
    plays = resolve_source("shakespeare")[:2]
    assert len(plan_chunks(plays, 16)) == 2
    path = tmp_path / "rg.parquet"
    texts = [f"doc {i} " + "y" * i for i in range(100)]
    pq.write_table(pa.table({"text": texts}), path, row_group_size=10)
    chunks = plan_chunks([path], 1)
    assert [(c.start, c.end, c.first_line) for c in chunks] == [(i, i + 1, 10 * i + 1) for i in range(10)]
    assert read_all(path, 1)[0] == read_all(path)[0]
    assert [t for t, _ in read_all(path, 1)[0]] == texts


@pytest.mark.timeout(20)
def test_a_file_that_shrinks_while_planning_is_a_bad_file(tmp_path):
    """Planning read on towards the size stat gave it and, at the end of the shorter file, looped forever."""
    path = tmp_path / "a.jsonl"
    path.write_text('{"text": "a"}\n' * 2)
    with pytest.raises(BadFileError, match="a.jsonl: byte offset 28: file shrank while planning"):
        sources._line_ranges(str(path), 10_000, 100)


def test_chunk_of_a_changed_file_is_refused(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"text": "a"}\n')
    (chunk,) = plan_chunks([path])
    path.write_text('{"text": "ab"}\n')
    with pytest.raises(BadFileError, match="changed since the chunks were planned"):
        list(read_chunk(chunk))
    # Edited in place at the same size (a mutation comparing sizes alone passed every test): a file's
    # chunks would mix both versions, under result names that vouch for the old one.
    (chunk,) = plan_chunks([path])
    path.write_text('{"text": "cd"}\n')
    os.utime(path, ns=(chunk.mtime_ns + 10**9, chunk.mtime_ns + 10**9))
    with pytest.raises(BadFileError, match="changed since the chunks were planned"):
        list(read_chunk(chunk))


# --- bad records ----------------------------------------------------------------------------------


def test_bad_records_are_skipped_counted_and_logged(tmp_path, caplog):
    path = tmp_path / "bad.jsonl"
    path.write_text(
        '{"text": "ok1"}\n{not json\n{"other": 1}\n{"text": null}\n{"text": 5}\n[1, 2]\n'
        '{"text": ["list"]}\n{"text": "ok2"}\n'
    )
    with caplog.at_level(logging.WARNING, logger="pipeline"):
        records, stats = read_all(path)
    assert [t for t, _ in records] == ["ok1", "ok2"]
    assert stats.bad_records == {
        "invalid_json": 1, "missing_text": 1, "null_text": 1, "non_string_text": 2, "not_an_object": 1
    }
    assert stats.examples == [f"{path}:{n}: {k}" for n, k in
                              [(2, "invalid_json"), (3, "missing_text"), (4, "null_text"),
                               (5, "non_string_text"), (6, "not_an_object")]]
    assert f"{path}:2: invalid_json" in caplog.text and f"{path}:7" not in caplog.text


def test_csv_header_padding_short_rows_parquet_large_strings_and_quiet_stats(tmp_path, caplog):
    """A CSV header name is matched stripped (" text"), a row too short to hold the text column is a
    counted missing_text (a blank line is no record), a parquet large_string column is text, and quiet
    stats keep their examples without logging them. Mutations matching the header unstripped, skipping
    short rows uncounted, accepting only string/binary parquet columns, or logging when quiet passed
    every test."""
    path = tmp_path / "pad.csv"
    path.write_text("id, text\n1,first\n2\n\n3,third\n")
    records, stats = read_all(path)
    assert [t for t, _ in records] == ["first", "third"]
    assert stats.bad_records == {"missing_text": 1} and stats.examples == [f"{path}:3: missing_text"]
    pq.write_table(pa.table({"text": pa.array(["a", "b"], pa.large_string())}), tmp_path / "big.parquet")
    assert texts_of(tmp_path / "big.parquet") == ["a", "b"]
    quiet = ReadStats(quiet=True)
    caplog.clear()  # the CSV's missing_text was logged: not quiet
    with caplog.at_level(logging.WARNING, logger="pipeline"):
        quiet.note("invalid_json", "f.jsonl:3")
    assert quiet.examples == ["f.jsonl:3: invalid_json"] and caplog.text == ""


def test_csv_row_with_more_fields_than_the_header_is_a_counted_bad_record(tmp_path):
    """An unquoted comma in the text splits it: the text column then holds a fragment ("Hello"), which
    was kept as a document, uncounted. Empty extra fields (a trailing comma) hide nothing."""
    path = tmp_path / "ragged.csv"
    path.write_text("id,text\n1,Hello, world.\n2,fine,\n3,a,,b\n4,ok\n5,spaced, \n")
    records, stats = read_all(path)
    assert [t for t, _ in records] == ["fine", "ok", "spaced"]  # a blank extra field, as a header's names are stripped
    assert stats.bad_records == {"too_many_fields": 2}
    assert stats.examples == [f"{path}:2: too_many_fields", f"{path}:4: too_many_fields"]


def test_invalid_utf8_and_lone_surrogates_are_replaced(tmp_path):
    path = tmp_path / "u.jsonl"
    path.write_bytes(b'{"text": "caf\xff!"}\n{"text": "lone \\ud800 surrogate"}\n{"text": "fine \xc3\xa9"}\n')
    records, stats = read_all(path)
    assert [t for t, _ in records] == ["caf\ufffd!", "lone \ufffd surrogate", "fine é"]
    assert stats.invalid_utf8 == 2 and not stats.bad_records
    for name, data in [
        ("u.json", b'[{"text": "caf\xff!"}, {"text": "ok"}]'),
        ("u.csv", b'text\n"caf\xff!"\nok\n'),
    ]:
        (tmp_path / name).write_bytes(data)
        records, stats = read_all(tmp_path / name)
        assert [t for t, _ in records] == ["caf\ufffd!", "ok"] and stats.invalid_utf8 == 1
    table = pa.table({"text": pa.array([b"caf\xff!", None], pa.binary()).cast(pa.string(), safe=False)})
    pq.write_table(table, tmp_path / "u.parquet")
    records, stats = read_all(tmp_path / "u.parquet")
    assert [t for t, _ in records] == ["caf\ufffd!"]
    assert stats.invalid_utf8 == 1 and stats.bad_records == {"null_text": 1}


def test_invalid_utf8_is_repaired_alike_in_every_format(tmp_path):
    """parquet replaced the truncated sequence in a\\xe2\\x82b with one U+FFFD, the other readers each
    byte with one: the same document deduplicated differently by format."""
    bad = b"a\xe2\x82b"
    (tmp_path / "u.jsonl").write_bytes(b'{"text": "' + bad + b'"}\n')
    (tmp_path / "u.csv").write_bytes(b"text\n" + bad + b"\n")
    pq.write_table(pa.table({"text": pa.array([bad], pa.binary())}), tmp_path / "u.parquet")
    got = {name: texts_of(tmp_path / name) for name in ["u.jsonl", "u.csv", "u.parquet"]}
    assert got == {name: ["a\ufffd\ufffdb"] for name in got}


@pytest.mark.parametrize("name", ["bom.jsonl", "bom.json", "bom.csv", "bom.md"])
def test_bom_and_crlf(tmp_path, name):
    body = {
        "bom.jsonl": '{"text": "a"}\r\n{"text": "b"}\r\n',
        "bom.json": '[{"text": "a"},\r\n {"text": "b"}]\r\n',
        "bom.csv": 'text\r\na\r\n"b"\r\n',
        "bom.md": "# T\r\n\r\n### SCENE I.\r\n\r\n**A**  \r\na  \r\n",
    }[name]
    path = tmp_path / name
    path.write_bytes(b"\xef\xbb\xbf" + body.encode())
    expected = ["T, SCENE I.\n\nA:\na"] if name.endswith(".md") else ["a", "b"]
    assert texts_of(path) == expected


@pytest.mark.parametrize("name", ["huge.jsonl", "huge.json", "huge.csv"])
def test_a_30mb_document(write_texts, name):
    doc = ("All the world's a stage. " * 1_300_000)[:30_000_000]
    assert texts_of(write_texts(name, ["small", doc, "after"])) == ["small", doc, "after"]


# --- stats and the whole-corpus path ---------------------------------------------------------------


def test_read_stats_merge_and_to_dict():
    a, b = ReadStats(records=2), ReadStats(records=3, invalid_utf8=1)
    for i in range(4):
        a.note("invalid_json", f"a:{i}")
        b.note("null_text", f"b:{i}")
    merged = a.merge(b).to_dict()
    assert merged["records"] == 5 and merged["invalid_utf8"] == 1
    assert merged["bad_records"] == {"invalid_json": 4, "null_text": 4}
    assert merged["examples"] == [f"a:{i}: invalid_json" for i in range(4)] + ["b:0: null_text"]
    assert ReadStats(**{**merged, "bad_records": a.bad_records}).to_dict() == merged


def test_read_stats_from_dict_inverts_to_dict():
    stats = ReadStats(records=7, invalid_utf8=2)
    stats.note("invalid_json", "f:1")
    stats.note("missing_text", "f:2")
    d = json.loads(json.dumps(stats.to_dict()))  # as a worker's result file carries it
    assert ReadStats.from_dict(d) == stats and ReadStats.from_dict(d).to_dict() == d
    assert ReadStats.from_dict(ReadStats().to_dict()) == ReadStats()


def test_iter_texts_reads_a_mixed_directory_in_order(write_texts, tmp_path):
    write_texts("mix/2.csv", ["c"])
    write_texts("mix/1.jsonl.gz", ["a", "b"])
    write_texts("mix/3.parquet", ["d"])
    assert [t for t, _ in iter_texts([tmp_path / "mix"], chunk_bytes=1)] == ["a", "b", "c", "d"]


@pytest.mark.skipif(not CC_EN_HEAD.is_dir(), reason="shared/corpora/cc_en_head not present")
def test_real_web_text():
    paths = expand_paths([CC_EN_HEAD])
    whole = [r for p in paths for r in read_all(p)[0]]
    lines = sum(len(p.read_bytes().splitlines()) for p in paths)
    assert len(whole) == lines and all(text.strip() for text, _ in whole)
    assert [r for p in paths for r in read_all(p, 4096)[0]] == whole
    with open(paths[0], "rb") as f:
        assert json.loads(f.readline())["text"] == whole[0][0]

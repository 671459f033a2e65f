"""Files the readers cannot read (corrupt, truncated, not in their format, missing): each is a
BadFileError naming the file and where, never a silent loss or a traceback."""

import gzip
import json
import os
import re
import tracemalloc

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from read_helpers import FORMATS, bad_file, read_all, texts_of

from pipeline import json_array, json_lines, readers
from pipeline.sources import BadFileError, Chunk, plan_chunks, read_chunk


@pytest.mark.parametrize("name", FORMATS + ["a.md"])
def test_empty_file_yields_nothing(tmp_path, name):
    (tmp_path / name).write_bytes(b"")
    assert read_all(tmp_path / name)[0] == []


@pytest.mark.parametrize(
    "name, match",
    [
        ("r.parquet", "not a readable parquet file"),
        ("r.json", "not JSON lines or a JSON array"),
        ("r.jsonl.gz", "cannot read as jsonl \\(compressed\\)"),
        ("r.jsonl.zst", "cannot read as jsonl \\(compressed\\)"),
        ("r.json.gz", "cannot read as json \\(compressed\\)"),
        ("r.csv.zst", "cannot read as csv \\(compressed\\)"),
        ("r.csv", "no column 'text'"),
        # Each line was one invalid_json record: a file of them passed, its loss only a count.
        ("r.jsonl", "none of its first 20 lines is JSON .*: not a JSON lines file"),
    ],
)
def test_random_bytes_are_a_bad_file(tmp_path, name, match):
    path = tmp_path / name
    path.write_bytes(bytes(range(1, 256)) * 40)  # starts "\x01\x02...", not JSON, gzip, zstd or parquet
    bad_file(path, match)


@pytest.mark.parametrize("name", ["t.jsonl.gz", "t.jsonl.zst", "t.csv.gz"])
def test_truncated_compressed_file(tmp_path, name):
    """Named by the last record read, not by a byte offset: the compressed position is where the
    decompressor had read to, past the fault, and was reported as the fault's own offset."""
    texts = [" ".join(str(i * j % 9973) for j in range(100)) for i in range(1000)]  # several zstd blocks
    body = "text\n" + "\n".join(texts) if ".csv" in name else "".join(json.dumps({"text": t}) + "\n" for t in texts)
    data = (gzip.compress if name.endswith(".gz") else zstandard.ZstdCompressor().compress)(body.encode())
    path = tmp_path / name
    path.write_bytes(data[: len(data) // 2])
    (chunk,) = plan_chunks([path])
    records = []
    with pytest.raises(BadFileError, match=r"cannot read as (jsonl|csv) \(compressed\): ") as info:
        records.extend(read_chunk(chunk))
    assert info.value.offset is None and "byte offset" not in str(info.value)
    found = re.search(r"\(found after reading ([\d,]+) compressed bytes, past the record at line (\d+)\)$",
                      str(info.value))
    assert found and 0 < int(found[1].replace(",", "")) <= len(data) // 2
    assert records and found[2] == records[-1][1].rpartition(":")[2]
    # ...and that number is the line the last good record sits on (a csv's line 1 is its header).
    assert records[-1][0] == texts[int(found[2]) - 1 - (".csv" in name)]


def test_a_zstd_file_needing_a_long_window_is_a_bad_file_that_says_what_to_do(tmp_path):
    """`zstd --long=31` writes frames that need a 2 GiB window; zstd's own "Frame requires too much memory
    for decoding" said neither why nor what to do about a file that is not broken."""
    writer = zstandard.ZstdCompressor(compression_params=zstandard.ZstdCompressionParameters(
        window_log=31, enable_ldm=True)).compressobj()
    path = tmp_path / "long.jsonl.zst"
    path.write_bytes(writer.compress(b'{"text": "a"}\n' * 100) + writer.flush())
    bad_file(path, r"its frames need a decoding window over 128 MiB \(written with `zstd --long`\?\): decompress "
                   r"it first \(`zstd -d --long=31 FILE`\) or recompress it without --long")


def test_zstd_is_decompressed_a_bounded_amount_at_a_time(tmp_path):
    """64 KiB of compressed input went to one decompress call: 11 KB of repetitive zstd gave 128 MiB at once."""
    path = tmp_path / "blank.jsonl.zst"
    path.write_bytes(zstandard.ZstdCompressor().compress((" " * 65535 + "\n").encode() * 1536 + b'{"text": "a"}\n'))
    tracemalloc.start()
    try:
        assert texts_of(path) == ["a"]  # after 96 MiB of blank lines
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 48 << 20


def test_a_csv_quote_that_never_closes_is_a_bad_file_not_a_swallowed_rest(tmp_path):
    path = tmp_path / "q.csv"
    path.write_text("id,text\n1,first row\n2,\"stray quote\n" + "".join(f"{i},row {i}\n" for i in range(3, 500)))
    err = bad_file(path, "the record starting at line 3: unexpected end of data")
    assert str(err).startswith(f"{path}: the record")
    fine = tmp_path / "fine.csv"
    fine.write_text('id,text\n1,"a ""quoted"" word"\n2,x"y\n3,"two\nlines"\n')
    assert texts_of(fine) == ['a "quoted" word', 'x"y', "two\nlines"]


@pytest.mark.parametrize("name", ["A.JSONL.GZ", "b.Jsonl.Zst"])
def test_compressed_suffixes_in_any_case_are_decompressed(write_texts, tmp_path, name):
    texts = [f"document {i}" for i in range(50)]
    lower = write_texts(name.lower(), texts)
    path = lower.rename(tmp_path / name)
    assert texts_of(path) == texts
    assert len(plan_chunks([path], 16)) == 1  # compressed: never split by bytes


def test_dictionary_encoded_parquet_text_is_text(tmp_path):
    """pandas writes a "category" column so."""
    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"text": pa.array(["x", "y", None, "x"]).dictionary_encode()}), path)
    records, stats = read_all(path)
    assert [t for t, _ in records] == ["x", "y", "x"] and stats.bad_records == {"null_text": 1}


def test_csv_without_the_text_column_names_the_columns(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text("id,body,url\n1,hello,x\n")
    bad_file(path, "no column 'text'; columns found: id, body, url")
    parquet = tmp_path / "p.parquet"
    pq.write_table(pa.table({"body": ["a"], "n": [1]}), parquet)
    bad_file(parquet, "no column 'text'; columns found: body, n")
    bad_file(parquet, "column 'n' holds int64, not text", text_field="n")


def test_csv_header_faults_are_named_plainly(tmp_path):
    """A blank first line listed no columns at all; two text columns took the first silently (parquet
    refuses them); a binary file's "header" printed its NULs and escape codes to the terminal."""
    path = tmp_path / "c.csv"
    path.write_text("\nid,text\n1,x\n")
    bad_file(path, "no column 'text'; line 1, the header, is blank")
    path.write_text(" , ,\n1,2,3\n")  # the names of a header of commas only were called blank
    bad_file(path, "no column 'text'; line 1, the header, names 3 columns, all empty")
    path.write_text("text,id,text\na,1,b\n")
    bad_file(path, "2 columns named 'text': which one is the text is unclear")
    path.write_bytes(bytes(range(256)) * 4 + b"\n")
    message = str(bad_file(path, "no column 'text'; columns found: '"))
    assert message.isprintable() and len(message) < len(str(path)) + 300


def test_parquet_with_two_columns_of_the_text_name_is_a_bad_file(tmp_path):
    """pyarrow's schema.field raised a KeyError that escaped as a traceback, even with --skip-bad-files."""
    path = tmp_path / "dup.parquet"
    pq.write_table(pa.table([pa.array(["a"]), pa.array(["b"])], names=["text", "text"]), path)
    bad_file(path, "2 columns named 'text'")


def test_a_file_of_another_format_named_jsonl_is_a_bad_file(tmp_path):
    """Such a file's lines were each one invalid_json record: with other files beside it, all it held
    vanished behind a count. Its first bytes say what it is."""
    good = b"".join(b'{"text": "record %d"}\n' % i for i in range(30))
    path, zipped = tmp_path / "x.jsonl", tmp_path / "x.jsonl.gz"
    for data, what in [(gzip.compress(good), "holds gzip data, not JSON lines \\(name it .jsonl.gz\\)"),
                       (zstandard.ZstdCompressor().compress(good), "holds zstd data"),
                       (good.decode().encode("utf-16"), "holds UTF-16 text, not JSON lines \\(convert it to UTF-8\\)")]:
        path.write_bytes(data)
        assert bad_file(path, what).offset == 0
    pq.write_table(pa.table({"text": ["a"]}), path)
    bad_file(path, "holds a parquet file")
    zipped.write_bytes(gzip.compress(gzip.compress(good)))
    bad_file(zipped, "holds gzip data inside its compression, not JSON lines \\(compressed twice\\?\\)")
    path.write_bytes(good.decode().encode("utf-16-le"))  # no byte order mark: NULs between the characters
    bad_file(path, r"none of its first 20 lines is JSON \(line 1 begins b'\{\\x00.*binary data \(NUL bytes\) or UTF-16")
    path.write_text("A play in five acts.\n\nACT I\n")  # fewer lines than the sniff needs: the file decides
    bad_file(path, "no line of it is JSON")
    path.write_bytes(good[:200] + b"\x00\x00\n")  # a good file with some damage keeps its good records
    assert len(texts_of(path)) == good[:200].count(b"\n")


def test_the_refusal_quotes_the_first_line_that_is_not_json_by_its_own_number(tmp_path):
    """It said "line 1 begins" of whichever line failed first: after blank lines, the quote was another
    line's; and its NUL hint ran on from "file" as if it were part of the sentence before."""
    path = tmp_path / "notes.jsonl"
    path.write_text("\n\nMeeting notes\nnothing decided\n")
    assert str(bad_file(path, "no line of it is JSON")).endswith(
        "no line of it is JSON (line 3 begins b'Meeting notes\\n'): not a JSON lines file")
    path.write_bytes(b"\n" + "{}\n".join(["x"] * 30).encode("utf-16-le"))
    bad_file(path, r"\(line 2 begins b'x\\x00.*: not a JSON lines file; binary data \(NUL bytes\) or UTF-16 text\?$")


def test_broken_records_at_a_file_start_stay_bad_records(tmp_path):
    """Up to 19 unparsable lines before the first JSON one are bad records, not a bad file; and in a
    file split into chunks, only its first chunk decides whether it is JSON lines at all."""
    path = tmp_path / "a.jsonl"
    good = [json.dumps({"text": f"record {i}"}) for i in range(200)]
    path.write_text("\n".join(["{broken"] * 19 + good + ["{broken"] * 30) + "\n")
    for chunk_bytes in (64 << 20, 300):
        records, stats = read_all(path, chunk_bytes=chunk_bytes)
        assert len(records) == 200 and stats.bad_records == {"invalid_json": 49}
    path.write_text("\n".join(["{broken"] * 20 + good) + "\n")
    bad_file(path, "none of its first 20 lines is JSON")
    path.write_text("\n".join(good + ["not json"] * 100) + "\n")
    assert len(read_all(path, chunk_bytes=300)[0]) == 200  # later chunks of nothing but bad lines


@pytest.mark.parametrize("broken", [3, 25])
def test_whether_a_file_is_json_lines_does_not_depend_on_the_chunk_size(tmp_path, broken):
    """A first chunk holding only a few broken records (long ones, or a small --chunk-bytes) refused the
    whole file, which a larger chunk read with those records counted as bad: the store depended on
    --chunk-bytes, which its fingerprint leaves out."""
    path = tmp_path / "a.jsonl"
    good = [json.dumps({"text": f"record {i}"}) for i in range(200)]
    path.write_text("\n".join(['{"text": "cut short' + "x" * 100] * broken + good) + "\n")
    outcomes = []
    for chunk_bytes in (64 << 20, 300, 250):  # the first chunk: 2 broken lines; 2 then the rest of a third
        try:
            records, stats = read_all(path, chunk_bytes=chunk_bytes)
            outcomes.append((len(records), dict(stats.bad_records)))
        except BadFileError as err:
            outcomes.append(err.message)
    assert outcomes[0] == ((200, {"invalid_json": 3}) if broken == 3 else
                           "none of its first 20 lines is JSON (line 1 begins b'{\"text\": \"cut shortxxxxxxxxxxxxxx"
                           "xxxxxxxxxxxxxxxxxxxxxxxxxxx'): not a JSON lines file")
    assert outcomes[1:] == [outcomes[0]] * 2

def test_a_first_chunk_of_blank_lines_does_not_skip_the_sniff(tmp_path):
    """A first chunk of blank lines only failed no line, so the sniff did not read on: a text file named
    .jsonl that a big chunk refused passed under a small --chunk-bytes, its lines counted invalid_json."""
    path = tmp_path / "a.jsonl"
    path.write_text("\n" * 400 + "".join(f"plain text line {i}\n" for i in range(200)))
    for chunk_bytes in (64 << 20, 300):
        bad_file(path, r"none of its first 20 lines is JSON \(line 401 begins", chunk_bytes=chunk_bytes)
    path.write_text("\n" * 400 + json.dumps({"text": "kept"}) + "\n")  # and a JSON line after them reads
    assert texts_of(path, chunk_bytes=300) == ["kept"]


@pytest.mark.parametrize("name", ["wrapped.json", "wrapped.jsonl"])
def test_records_wrapped_in_one_object_are_a_bad_file_not_one_missing_text(tmp_path, name):
    """`{"data": [{"text": ...}, ...]}` on one line was read as one record without text: the whole file
    went as a single missing_text count, beside other files without a word."""
    path = tmp_path / name
    records = [{"text": f"document {i}", "id": i} for i in range(50)]
    path.write_text(json.dumps({"version": "1", "data": records}) + "\n")
    bad_file(path, r"line 1 is one object holding records under 'data', not a record: .*jq -c '\.data\[\]'")
    path.write_text(json.dumps({"text": "kept", "sections": records}) + "\n")  # a record that holds such a list
    assert texts_of(path) == ["kept"]


def test_a_byte_order_mark_inside_a_jsonl_file_is_dropped(tmp_path):
    """Files with a BOM concatenated (`cat a.jsonl b.jsonl`): the line that began with one was invalid_json."""
    path = tmp_path / "cat.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"text": "a"}\n\xef\xbb\xbf{"text": "b"}\n')
    records, stats = read_all(path)
    assert [t for t, _ in records] == ["a", "b"] and not stats.bad_records


def test_a_checksum_fault_says_the_damage_can_be_before_the_records_read(tmp_path):
    """gzip checks its CRC at the end: "past the record at line N" read as if lines 1..N were sound."""
    data = bytearray(gzip.compress(b"".join(b'{"text": "r%d"}\n' % (i % 7) for i in range(5000))))
    data[-8] ^= 0xFF  # the stored CRC itself: the text decodes whole, then fails the check
    path = tmp_path / "crc.jsonl.gz"
    path.write_bytes(bytes(data))
    bad_file(path, "CRC check failed .*past the record at line 5000; the checksum covers what came before")


def test_missing_and_unreadable_paths(tmp_path):
    with pytest.raises(BadFileError, match="nope.jsonl: no such file"):
        plan_chunks([tmp_path / "nope.jsonl"])
    gone = Chunk(str(tmp_path / "gone.jsonl"), 0, 10, 0, 10, 0, "jsonl")
    with pytest.raises(BadFileError, match="gone.jsonl: no such file"):
        list(read_chunk(gone))
    (tmp_path / "dir.jsonl").mkdir()  # a directory where a file is expected fails even for root
    with pytest.raises(BadFileError, match="dir.jsonl: is a directory"):
        plan_chunks([tmp_path / "dir.jsonl"])
    with pytest.raises(BadFileError, match="dir.jsonl: is a directory"):
        list(read_chunk(Chunk(str(tmp_path / "dir.jsonl"), 0, 1, 0, 1, 0, "jsonl")))


def test_permission_denied(tmp_path, monkeypatch):
    path = tmp_path / "locked.jsonl"
    path.write_text('{"text": "a"}\n')
    path.chmod(0)
    try:
        if os.access(path, os.R_OK):
            # Root reads through chmod 000 (as in CI): make the kernel's answer for this file EACCES.
            real_open = open

            def open_as_user(file, *args, **kwargs):
                if str(file) == str(path):
                    raise PermissionError(13, "Permission denied", str(file))
                return real_open(file, *args, **kwargs)

            monkeypatch.setattr("pipeline.sources.open", open_as_user, raising=False)
        bad_file(path, "locked.jsonl: permission denied")
    finally:
        path.chmod(0o644)


@pytest.mark.parametrize("name", ["cr.jsonl", "cr.jsonl.gz", "cr.json"])
def test_cr_only_line_ends_are_a_bad_file(tmp_path, name):
    """Split by "\\n", a file with CR-only line ends was one bad line: every record lost, counted as 1."""
    data = b'{"text": "a"}\n{"text": "b"}\r{"text": "c"}\r'
    path = tmp_path / name
    encode = gzip.compress if name.endswith(".gz") else bytes
    path.write_bytes(encode(data))
    bad_file(path, "line 2 holds carriage returns between whole JSON objects: .*CR alone")
    path.write_bytes(encode(data[data.index(b"\n") + 1 :]))  # a .json file is sniffed by its first line
    bad_file(path, "line 1 holds carriage returns between whole JSON objects")
    fine = tmp_path / "fine.jsonl"  # a CR is whitespace between JSON tokens, and ends CRLF lines
    fine.write_bytes(b'{"text":\r"a"}\r\n{bad\r\n{"text": "b"}\r\n')
    records, stats = read_all(fine)
    assert [t for t, _ in records] == ["a", "b"] and stats.bad_records == {"invalid_json": 1}
    # One record with a raw CR in a string (invalid JSON), or CR whitespace in an otherwise broken line,
    # is one bad record: the file was refused as CR-only.
    fine.write_bytes(b'{"text": "a"}\n{"text": "x\ry"}\n{"a": 1,\r"b": }\n{"text": "b"}\n')
    records, stats = read_all(fine)
    assert [t for t, _ in records] == ["a", "b"] and stats.bad_records == {"invalid_json": 2}
    # A broken first record does not hide CR-only line ends: the next pieces are whole objects.
    path.write_bytes(encode(b'{"text": "broken\r' + b"\r".join(b'{"text": "r%d"}' % i for i in range(9))))
    bad_file(path, "line 1 holds carriage returns between whole JSON objects")


@pytest.mark.parametrize("name", ["bom.jsonl", "bom.json", "bom.csv", "bom.md"])
def test_a_byte_order_mark_alone_yields_nothing(tmp_path, name):
    """The empty line left once the BOM was dropped counted as one invalid_json record."""
    path = tmp_path / name
    path.write_bytes(b"\xef\xbb\xbf")
    records, stats = read_all(path)
    assert records == [] and not stats.bad_records


def test_a_parquet_file_without_row_groups_is_planned_and_checked(tmp_path):
    """A writer closed before its first row leaves no row groups. Planned as no chunk at all (a mutation
    that passed every test), such a file was never opened: one without the text column went unreported."""
    for name, column in (("ok.parquet", "text"), ("other.parquet", "body")):
        pq.ParquetWriter(tmp_path / name, pa.schema([(column, pa.string())])).close()
        assert pq.ParquetFile(tmp_path / name).metadata.num_row_groups == 0
    assert texts_of(tmp_path / "ok.parquet") == []
    bad_file(tmp_path / "other.parquet", "no column 'text'; columns found: body")


@pytest.mark.parametrize("name", ["long.jsonl", "long.jsonl.gz"])
def test_a_line_over_the_record_limit_is_skipped_as_it_streams_past(tmp_path, monkeypatch, name):
    """A 2 GiB line was read whole: ~4.5 GB in one worker, and a MemoryError naming no file (or a crash
    inside orjson) where that was too much. Scaled down here: the limit is 64 bytes."""
    monkeypatch.setattr(json_lines, "MAX_RECORD_BYTES", 64)
    long = json.dumps({"text": "x" * 100})
    lines = [json.dumps({"text": "a"}), long, json.dumps({"text": "b" * 40}), long + "  " * 3000,
             json.dumps({"text": "c"})]
    data = "\n".join(lines + [long]).encode()  # the last line has no newline
    path = tmp_path / name
    path.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    for chunk_bytes in (64 << 20, 50):
        records, stats = read_all(path, chunk_bytes=chunk_bytes)
        assert [t for t, _ in records] == ["a", "b" * 40, "c"]
        assert [w for _, w in records] == [f"{path}:{n}" for n in (1, 3, 5)]
        assert stats.bad_records == {"record_too_long": 3}
        assert stats.examples == [f"{path}:{n}: record_too_long" for n in (2, 4, 6)]


@pytest.mark.parametrize("name", ["quote.csv", "quote.json"])
def test_a_quote_that_never_closes_stops_at_the_record_limit(tmp_path, monkeypatch, name):
    """A stray quote makes the rest of the file one CSV field or JSON array element, which was held whole
    (a 100 MB CSV took 460 MB in one worker) before the file was called bad at its end: a big file
    killed the worker, with an error naming no file. Now the same bad file, once past the limit (64
    bytes here, read 16 at a time). Fields and elements under it read as before."""
    for module in (readers, json_array):
        monkeypatch.setattr(module, "MAX_RECORD_BYTES", 64)
    monkeypatch.setattr(json_array, "BLOCK", 16)
    ok, rest = "x" * 40, "more text, and more\n" * 20
    if name.endswith(".csv"):
        good, bad, where = f'text\n"{ok}"\n', f'text\n"{ok}"\n"stray\n{rest}', "the record starting at line 3"
    else:
        good = f'[{{"text": "{ok}"}}]'
        bad, where = f'[{{"text": "{ok}"}},\n{{"text": "stray\n{rest}', "line 2: the element starting here"
    path = tmp_path / name
    path.write_text(good)
    assert texts_of(path) == [ok]
    path.write_text(bad)
    bad_file(path, f"{where}.* runs over 64 characters \\(a quote that never closes\\?\\)")


def test_a_line_of_exactly_the_record_limit_is_read_with_or_without_its_newline(tmp_path, monkeypatch):
    """The newline counted against the limit: a record of exactly MAX_RECORD_BYTES was skipped as too long,
    except as a file's last line without one. Scaled down here: the limit is 64 bytes."""
    monkeypatch.setattr(json_lines, "MAX_RECORD_BYTES", 64)
    exact, over = json.dumps({"text": "x" * 52}), json.dumps({"text": "y" * 53})
    assert (len(exact), len(over)) == (64, 65)
    path = tmp_path / "edge.jsonl"
    path.write_text("\n".join([exact, over, exact, exact]))
    records, stats = read_all(path)
    assert [w for _, w in records] == [f"{path}:{n}" for n in (1, 3, 4)] and stats.bad_records == {"record_too_long": 1}

"""The .json reader: a streamed top-level array of objects, or JSON lines under a .json name."""

import io
import json

import pytest
from read_helpers import bad_file, read_all, texts_of

from pipeline import json_array, json_lines


def test_json_array_scanner_across_tiny_reads(tmp_path, monkeypatch):
    monkeypatch.setattr(json_array, "BLOCK", 3)  # every element and string straddles reads
    tricky = ['a "quoted" ] } , [ {', "back\\slash\\", "\\\"", "x" * 50, "日本語"]
    values = [{"text": t, "nested": {"list": [1, [2, {"k": "]"}]]}} for t in tricky]
    path = tmp_path / "t.json"
    path.write_text(json.dumps(values, ensure_ascii=False))
    assert texts_of(path) == tricky
    path.write_text("[]")
    assert texts_of(path) == []
    path.write_text('[{"text": "ok"}, 7, {"id": 1}, {"text": "end"}]')
    texts, stats = read_all(path)
    assert [t for t, _ in texts] == ["ok", "end"]
    assert stats.bad_records == {"not_an_object": 1, "missing_text": 1}


def test_a_first_line_over_the_record_limit_is_not_read_whole(tmp_path, monkeypatch):
    """Which layout a .json file has was judged from its first line read whole: a one-line file of GBs
    was held (and parsed) by the process planning the chunks. Past the limit (64 bytes here) it is a
    JSON lines file, whose reader skips the line as it streams past (record_too_long)."""
    monkeypatch.setattr(json_array, "MAX_RECORD_BYTES", 64)
    monkeypatch.setattr(json_lines, "MAX_RECORD_BYTES", 64)
    monkeypatch.setattr(json_array, "BLOCK", 8)
    data = json.dumps({"data": [{"text": f"doc {i}"} for i in range(100)]}).encode() + b"\n"
    stream = io.BytesIO(data)
    assert json_array.json_layout(stream, "one.json") == "jsonl" and stream.tell() <= 8 + 64 + 1
    path = tmp_path / "one.json"
    path.write_bytes(data + b'{"text": "next"}\n')
    texts, stats = read_all(path)
    assert [t for t, _ in texts] == ["next"] and stats.bad_records == {"record_too_long": 1}


def test_an_element_that_is_not_json_makes_the_array_a_bad_file(tmp_path):
    """A stray or missing quote flips the scanner's idea of what is inside a string, so the element
    it cuts out runs on over the records after it: none of the structure can be trusted from there."""
    docs = [{"id": i, "text": f"doc{i} " + t} for i, t in enumerate(["[a]", "c,d", "c,d", "{b}", 'q"q', "", "", ""])]
    path = tmp_path / "quote.json"
    path.write_text(json.dumps(docs, indent=1).replace('"text": "doc0', '"text: "doc0', 1))
    err = bad_file(path, "line 2: the array element starting here is not valid JSON")
    assert str(err).startswith(f"{path}: line 2:")
    path.write_text('[{"text": "ok"},\n {"text": broken},\n {"text": "end"}]')
    bad_file(path, "line 2: the array element")
    # json.dump's one-line array: the element's number says where (its line is the file's only one).
    path.write_text(json.dumps(docs).replace('"text": "doc3', '"text: "doc3', 1))
    bad_file(path, r"line 1: the array element starting here is not valid JSON.*\(array element 4\)")
    path.write_text(json.dumps(docs)[:-10])  # inside the last element
    bad_file(path, r"line 1: the element starting here is not closed before the file ends \(array element 8\)")


def test_an_empty_element_is_one_bad_record(tmp_path):
    """A trailing or doubled comma hides no record, so it is counted where it is, not a bad file."""
    path = tmp_path / "commas.json"
    path.write_text('[{"text": "a"},\n,\n{"text": "b"},\n]')
    texts, stats = read_all(path)
    assert [t for t, _ in texts] == ["a", "b"]
    assert stats.bad_records == {"invalid_json": 2}
    assert stats.examples == [f"{path}:2: invalid_json", f"{path}:4: invalid_json"]


@pytest.mark.parametrize(
    "content, match",
    [
        ('[{"text": "a"},\n {"text": "b"', "line 2: the element starting here is not closed"),
        ('[{"text": "a"}]\n\n trailing', "line 3: unexpected data after the JSON array"),
        ('"just a string"', "line 1: not JSON lines or a JSON array"),
        ('[{"text": "a"},\n{"text": "b"}\n}]', "line 3: unbalanced '}'"),
    ],
)
def test_broken_json_array_is_a_bad_file_named_with_the_line(tmp_path, content, match):
    """The line of the fault, not a byte offset: the reader's position is where its buffer ends."""
    path = tmp_path / "x.json"
    path.write_text(content)
    err = bad_file(path, match)
    assert str(err).startswith(f"{path}: line ")


def test_the_line_of_a_fault_deep_in_a_large_array(tmp_path):
    path = tmp_path / "big.json"
    elements = [f'{{"text": "document {i} {"x" * 20000}"}}' for i in range(200)]
    elements[150] += "}"
    path.write_text("[\n" + ",\n".join(elements) + "\n]")
    bad_file(path, "line 152: unbalanced '}'")


def test_a_pretty_printed_json_object_is_a_bad_file(tmp_path):
    path = tmp_path / "pretty.json"
    path.write_text("".join(json.dumps({"text": f"doc {i}"}, indent=2) + "\n" for i in range(3)))
    bad_file(path, "line 1 is not one whole JSON value, .*a pretty-printed JSON object")


@pytest.mark.parametrize(
    "content",
    [
        '{"text": "a",\n "id": 1}\n',  # every line a bad record: nothing kept
        '\n\n{"data": [\n {"text": "a"},\n {"text": "b"}\n]}\n',  # an inner line kept, one dropped
        '{"text": \n{"text": "b"}\n',  # a broken first line
    ],
)
def test_a_json_file_whose_first_line_is_not_a_whole_value_is_a_bad_file(tmp_path, content):
    """Only a first line of exactly `{` was caught: other multi-line objects were read as JSON lines,
    each line a bad record or, worse, an inner object kept as a record."""
    path = tmp_path / "multi.json"
    path.write_text(content)
    line = 3 if content.startswith("\n") else 1
    err = bad_file(path, f"line {line} is not one whole JSON value")
    assert str(err).startswith(f"{path}: line {line}")


def test_an_array_after_a_megabyte_of_blank_lines_is_still_an_array(tmp_path):
    """Only the first MiB was looked at: past it the array was read as JSON lines, all of it lost."""
    path = tmp_path / "late.json"
    path.write_text(" \n" * (1 << 20) + '[{"text": "a"}, {"text": "b"}]')
    assert texts_of(path) == ["a", "b"]
    path.write_text(" \n" * (1 << 20) + '{"text": "a"}\n{"text": "b"}\n')
    assert texts_of(path) == ["a", "b"]


def test_a_long_blank_line_before_a_broken_object_counts_once(tmp_path, monkeypatch):
    """A blank line longer than a read block comes in several pieces: only its newline ends a line."""
    monkeypatch.setattr(json_array, "BLOCK", 4)
    path = tmp_path / "blank.json"
    path.write_text(" " * 50 + "\n\n" + '{"text": "a",\n "id": 1}\n')
    bad_file(path, "line 3 is not one whole JSON value")


def test_json_lines_in_a_json_file_with_a_first_line_longer_than_a_block(tmp_path, monkeypatch):
    """The first line is sniffed in a block; a longer object is read whole, not taken for a broken one."""
    monkeypatch.setattr(json_array, "BLOCK", 8)
    path = tmp_path / "long.json"
    path.write_text('{"text": "' + "x" * 100 + '"}\n{"text": "b"}\n')
    assert texts_of(path) == ["x" * 100, "b"]


def test_a_byte_order_mark_before_json_lines_in_a_json_file(tmp_path):
    """The layout is sniffed past a BOM: JSON lines after one are not taken for a broken array."""
    path = tmp_path / "bom.json"
    path.write_bytes(b"\xef\xbb\xbf" + b'{"text": "a"}\n{"text": "b"}\n')
    assert texts_of(path) == ["a", "b"]


def test_newlines_in_whitespace_across_reads_are_counted(tmp_path, monkeypatch):
    """Whitespace that runs past the buffered text still moves the line on, so a fault's line is right."""
    monkeypatch.setattr(json_array, "BLOCK", 3)
    path = tmp_path / "gaps.json"
    path.write_text('[\n\n\n\n{"text": "a"},\n\n\n\n {"text": broken}]')
    bad_file(path, "line 9: the array element starting here is not valid JSON")


def test_a_large_element_is_read_in_growing_blocks(tmp_path, monkeypatch):
    """Each read takes at least what is held, so a huge element is rescanned O(log size) times, not
    once per block (quadratic in its size)."""
    monkeypatch.setattr(json_array, "BLOCK", 16)
    reads = []
    more = json_array._ArrayScanner._more
    monkeypatch.setattr(json_array._ArrayScanner, "_more", lambda self: reads.append(1) or more(self))
    path = tmp_path / "large.json"
    path.write_text(json.dumps([{"text": "x" * 100_000}]))
    assert texts_of(path) == ["x" * 100_000]
    assert len(reads) < 40

"""bench/doc_corpus.py on Debian packages built here with dpkg-deb (no archive needed): which files of
each package become documents, and how HTML and the dictionary are turned into text."""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess

import pytest

pytestmark = pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb (Debian's tools)")

PROSE = "The quick brown fox jumps over the lazy dog, and then it reads the manual again. " * 4


def build_deb(tmp_path, package: str, files: dict[str, bytes]) -> None:
    root = tmp_path / "build" / package
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN/control").write_text(f"Package: {package}\nVersion: 1.0\nArchitecture: all\n"
                                         "Maintainer: nobody <nobody@example.org>\nDescription: test\n")
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    (tmp_path / "work/debs").mkdir(parents=True, exist_ok=True)
    subprocess.run(["dpkg-deb", "--build", "--root-owner-group", str(root),
                    str(tmp_path / f"work/debs/{package}_1.0_all.deb")], check=True, capture_output=True)


def test_packages_become_jsonl_documents(bench_script, tmp_path):
    corpus = bench_script("doc_corpus")
    page = (f"<html><head><style>p {{color: red}}</style><script>var x = 1;</script></head>"
            f"<body><h1>Title</h1><p>{PROSE}</p>line one<br>line two</body></html>")
    dictionary = "\n\n".join(f"word{i} \\word{i}\\ n.\n   1. {PROSE[:60]}" for i in range(450))
    packages = {
        "linux-doc-6.1": {"usr/share/doc/linux-doc-6.1/a.rst.gz": gzip.compress(PROSE.encode()),
                          "usr/share/doc/linux-doc-6.1/short.txt": b"too short to keep"},
        "python3.11-doc": {"usr/share/doc/python3.11/html/_sources/x.rst.txt": PROSE.encode(),
                           "usr/share/doc/python3.11/html/x.html": page.encode()},  # the HTML twin: not read
        "postgresql-doc-15": {"usr/share/doc/postgresql-doc-15/html/page.html": page.encode()},
        "git-doc": {"usr/share/doc/git-doc/g.txt": PROSE.encode()},
        "perl-doc": {"usr/share/perl/5.36/pod/p.pod": PROSE.encode()},
        "dict-gcide": {"usr/share/dictd/gcide.dict.dz": gzip.compress(dictionary.encode())},
        "fortunes": {"usr/share/games/fortunes/wisdom": PROSE.encode(),
                     "usr/share/games/fortunes/wisdom.dat": b"\x00\x02" * 200},
    }
    assert set(packages) == set(corpus.PACKAGES)
    for package, files in packages.items():
        build_deb(tmp_path, package, files)
    assert corpus.main([str(tmp_path / "work")]) == 0
    docs = {p: [json.loads(line) for line in (tmp_path / f"work/jsonl/{p}.jsonl").read_text().splitlines()]
            for p in packages}
    assert all(d["source"] == p for p, records in docs.items() for d in records)
    assert [d["text"] for d in docs["linux-doc-6.1"]] == [PROSE]  # gunzipped; the stub left out
    assert len(docs["python3.11-doc"]) == 1 and len(docs["fortunes"]) == 1  # the .dat index left out
    html = docs["postgresql-doc-15"][0]["text"]
    assert html.startswith("Title\n") and PROSE.strip() in html and "var x" not in html and "color" not in html
    assert html.endswith("line one\nline two")  # <br> has no end tag
    entries = [d["text"].split("\n\n") for d in docs["dict-gcide"]]
    assert [len(e) for e in entries] == [200, 200, 50] and entries[2][-1].startswith("word449 ")
    assert not list((tmp_path / "work/jsonl").glob(".*"))  # no temporary file left

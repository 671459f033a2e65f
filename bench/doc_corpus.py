#!/usr/bin/env python3
"""A real-English corpus of ~125 MB (~100 MB once `prepare` drops exact duplicates) made from Debian's
documentation packages, small enough to carry to a GPU machine without internet: for comparisons of
model shapes (bench/shapes.py), which the synthetic store of `make gpu-check` cannot make.

Why these: the lent GPU machine has no internet and the one real web sample here (../shared's
cc_en_head) is 180 KB; Debian's archive is reachable from the developers' machines and holds
human-written English in bulk: the Linux kernel's documentation, Python's and PostgreSQL's manuals,
git's and Perl's documentation, the GNU Collaborative International Dictionary of English (Webster's
1913 with its quotations) and the fortune files. It is technical and reference prose, not web text,
so absolute losses do not carry over to RedPajama; differences between shapes trained on it are what
it is for.

    python bench/doc_corpus.py /tmp/doc-corpus        # apt-get download + extract + JSONL shards
    make prepare ARGS="--data /tmp/doc-corpus/jsonl --name debian-docs --clean-preset minimal --val-fraction 0.03"

Writes <dir>/jsonl/<package>.jsonl, one {"text", "source"} record per document (a file; the dictionary
in runs of 200 entries; the fortune files each whole). The package versions are whatever the archive
serves that day: the script prints them, and bench/RESULTS.md records them with each result. The
package names are Debian 12's (bookworm: linux-doc-6.1, python3.11-doc, postgresql-doc-15); another
release names other versions, and `apt-get download` then fails naming the package.
"""

from __future__ import annotations

import argparse
import gzip
import html.parser
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.files import atomic_write_bytes  # noqa: E402

PACKAGES = ("linux-doc-6.1", "python3.11-doc", "postgresql-doc-15", "git-doc", "perl-doc", "dict-gcide",
            "fortunes")
# Where each package keeps its text, and which files are documents (HTML only where no text source is
# shipped: Python's manual ships its reStructuredText sources beside the HTML).
SOURCES = {
    "linux-doc-6.1": ("usr/share/doc/linux-doc-6.1", ("*.rst.gz", "*.txt.gz", "*.rst", "*.txt")),
    "python3.11-doc": ("usr/share/doc/python3.11/html/_sources", ("*.rst.txt",)),
    "postgresql-doc-15": ("usr/share/doc/postgresql-doc-15/html", ("*.html",)),
    "git-doc": ("usr/share/doc/git-doc", ("*.txt",)),
    "perl-doc": ("usr/share/perl", ("*.pod",)),
    "fortunes": ("usr/share/games/fortunes", ("*",)),
}
DICT_ENTRIES_PER_DOC = 200  # gcide has ~200k entries: ~1000 documents of a few tens of KB
MIN_CHARS = 200  # index pages, stubs and empty files say nothing


class _TextOfHtml(html.parser.HTMLParser):
    """The visible text of a page: script and style dropped, block ends as line breaks."""

    BLOCKS = {"p", "div", "li", "tr", "h1", "h2", "h3", "h4", "pre", "dt", "dd", "table", "title"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs) -> None:
        self._skip += tag in ("script", "style")
        if tag == "br":  # a void element: no end tag follows
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style"):
            self._skip = max(self._skip - 1, 0)
        if tag in self.BLOCKS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append(data)


def html_text(page: str) -> str:
    parser = _TextOfHtml()
    parser.feed(page)
    return re.sub(r"\n\s*\n+", "\n\n", "".join(parser.parts)).strip()


def read_text(path: Path) -> str:
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    return raw.decode("utf-8", errors="replace")


def package_docs(root: Path, package: str) -> Iterator[str]:
    if package == "dict-gcide":
        yield from dictionary_docs(root / "usr/share/dictd/gcide.dict.dz")
        return
    folder, patterns = SOURCES[package]
    for pattern in patterns:
        for path in sorted((root / folder).rglob(pattern)):
            if not path.is_file() or path.name.endswith((".dat", ".u8")) or path.is_symlink():
                continue
            text = read_text(path)
            yield html_text(text) if path.suffix == ".html" else text


def dictionary_docs(path: Path) -> Iterator[str]:
    """dictzip is gzip-compatible; the dictd text is plain, an entry starting at an unindented line
    after a blank one."""
    text = gzip.decompress(path.read_bytes()).decode("utf-8", errors="replace")
    entries = re.split(r"\n\n(?=\S)", text)
    for start in range(0, len(entries), DICT_ENTRIES_PER_DOC):
        yield "\n\n".join(entries[start:start + DICT_ENTRIES_PER_DOC])


def download(folder: Path) -> dict[str, str]:
    """apt-get download each package into folder and extract it there; returns package -> version."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(folder / "root", ignore_errors=True)  # files of an earlier version must not stay
    versions = {}
    for package in PACKAGES:
        debs = sorted(folder.glob(f"{package}_*.deb"))
        if not debs:
            subprocess.run(["apt-get", "download", package], cwd=folder, check=True)
            debs = sorted(folder.glob(f"{package}_*.deb"))
        subprocess.run(["dpkg-deb", "-x", str(debs[-1]), str(folder / "root")], check=True)
        versions[package] = debs[-1].name.split("_")[1]
    return versions


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dir", type=Path, help="work folder: debs/ (their files unpacked in debs/root/) and jsonl/")
    args = parser.parse_args(argv)
    versions = download(args.dir / "debs")
    out = args.dir / "jsonl"
    out.mkdir(parents=True, exist_ok=True)
    total = 0
    for package in PACKAGES:
        docs = [text for text in package_docs(args.dir / "debs" / "root", package) if len(text) >= MIN_CHARS]
        lines = "".join(json.dumps({"text": text, "source": package}, ensure_ascii=False) + "\n" for text in docs)
        # Whole or not at all: a stopped run leaves no shard that looks complete (at most ~55 MB in memory).
        atomic_write_bytes(out / f"{package}.jsonl", lines.encode())
        n, size = len(docs), sum(len(text.encode()) for text in docs)
        total += size
        print(f"{package} {versions[package]}: {n:,} documents, {size / 1e6:.1f} MB")
    print(f"total {total / 1e6:.1f} MB of text in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

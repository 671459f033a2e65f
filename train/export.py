"""A trained GPT for inference: loaded from a training checkpoint or an exported folder, and exported.

An export folder holds no pickle at all:

    model.safetensors   the weights (a tied output projection is stored once), with metadata:
                        tokenizer_sha256, step, source (the checkpoint it came from), data (the
                        absolute path of the token store it was trained on, when known)
    config.json         the GPTConfig fields: GPTConfig(**json.load(f))
    tokenizer.json      the tokenizer the ids come from

The weights are what makes a folder an export, and are renamed into place last (the old ones removed
first): a crash while an export is replaced leaves no export, never one file of each.

Checkpoints and exports may come from anyone, so neither is ever unpickled: checkpoints go through
train/checkpoint.py's weights_only loader, exports through safetensors and JSON. Whatever the
source, the tokenizer file used must have the sha256 the model was trained with, or loading
stops: another tokenizer's ids mean other things and the model would produce garbage.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_model, save_model

from common.config import from_dict
from common.files import atomic_write_bytes, fsync_dir, fsync_path, sha256_file
from model.config import GPTConfig
from model.gpt import GPT
from pipeline.store import StoreError, TokenStore
from pipeline.store_layout import MANIFEST, part_folders
from train.checkpoint import MARKER, open_checkpoint
from train.checkpoint import STATE as STATE_FILE

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
TOKENIZER = "tokenizer.json"


class TokenizerMismatch(ValueError):
    """The tokenizer file is not the one the model was trained with."""


@dataclass
class LoadedModel:
    model: GPT
    tokenizer_path: Path
    """Verified: its sha256 is the one the model was trained with."""
    tokenizer_sha256: str
    step: int | None
    source: Path
    """The checkpoint directory or export folder the weights came from."""
    data: str | None = None
    """The token store the model was trained on (for bin/eval.py's default): for a checkpoint the first of
    data_looked that holds a store, else the path as the checkpoint saved it; for an export the one it
    recorded."""
    data_looked: tuple[str, ...] = ()
    """Where the training store was looked for (for error messages)."""


def _verify_tokenizer(path: Path, expected: str, source: Path) -> None:
    if not expected:
        raise TokenizerMismatch(f"{source} records no tokenizer sha256, so no tokenizer can be verified for it")
    try:
        actual = sha256_file(path)
    except OSError as err:  # a directory, unreadable, ...: the scripts report ValueErrors as one line
        raise ValueError(f"tokenizer {path}: cannot read it ({err.strerror or err})") from None
    if actual != expected:
        raise TokenizerMismatch(
            f"tokenizer {path} has sha256 {actual[:12]}..., but {source} was trained with {expected[:12]}...: "
            "its token ids would mean other things. Use the tokenizer.json of the store the model was trained "
            "on (--tokenizer PATH)")


def _store_candidates(ckpt: Path, config: dict) -> list[Path]:
    """Where the training store `config["data"]` may be now. A relative path was relative to the
    directory training ran in, which need not be today's cwd: that directory is the run directory
    minus its configured out_dir (runs/tiny in /repo/runs/tiny -> /repo), else the run directory's parent."""
    data = Path(config["data"])
    if data.is_absolute():
        return [data]
    run_dir = ckpt.resolve().parent
    candidates = [data]
    out_parts = Path(str(config.get("out_dir", ""))).parts
    if out_parts and ".." not in out_parts and run_dir.parts[-len(out_parts):] == out_parts:
        candidates.append(Path(*run_dir.parts[: -len(out_parts)]) / data)
    candidates.append(run_dir.parent / data)
    unique: dict[str, Path] = {}
    for path in candidates:
        unique.setdefault(os.path.abspath(path), path)
    return list(unique.values())


def _training_store(ckpt: Path, state: dict) -> tuple[str | None, tuple[str, ...]]:
    """(the training store's path: the first candidate holding a store, else as saved; where it was looked for)."""
    config = state.get("config")
    if not isinstance(config, dict) or not isinstance(config.get("data"), str) or not config["data"]:
        return None, ()
    candidates = _store_candidates(ckpt, config)
    found = next((p for p in candidates if (p / "manifest.json").is_file()), None)
    return (str(found) if found is not None else config["data"]), tuple(map(str, candidates))


def _checkpoint_tokenizer(ckpt: Path, data: str | None) -> Path:
    """The run directory's copy of the tokenizer, else the training store's own."""
    candidates = [ckpt.parent / TOKENIZER]
    # The store may have been moved or deleted since; the run directory's copy is the usual one anyway.
    with contextlib.suppress(StoreError, TypeError):
        candidates.append(TokenStore(data).tokenizer_path)
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        raise FileNotFoundError(f"no tokenizer for {ckpt}: looked for {', '.join(map(str, candidates))}; "
                                "pass --tokenizer PATH")
    return found


def _fill(model: GPT, loader: Callable[[], object], source: Path) -> None:
    """Run a strict weight loader; weights that do not fit the config are a ValueError naming the source."""
    try:
        loader()
    except RuntimeError as err:
        raise ValueError(f"{source}: the weights do not fit its model config: {str(err).splitlines()[0]}") from None
    except SafetensorError as err:  # truncated or garbled file: not a config mismatch
        raise ValueError(f"{source / WEIGHTS}: not a readable safetensors file ({err})") from None


def load(path: str | Path, device: str | torch.device = "cpu", tokenizer: str | Path | None = None) -> LoadedModel:
    """The model at `path` (a run directory -> its newest complete checkpoint, a checkpoint directory,
    or an export folder), in eval mode on `device`, with its verified tokenizer. `tokenizer`
    overrides where the tokenizer is looked for (it is verified all the same)."""
    path = Path(path)
    if (path / WEIGHTS).is_file():
        loaded = _load_export(path)
    else:
        ckpt, state = open_checkpoint(path)  # a CheckpointError (a ValueError) if unreadable
        if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
            raise ValueError(f"{ckpt}: not a checkpoint: {STATE_FILE} holds no model state dict")
        try:
            model = GPT(GPTConfig(**state["model_config"]))
            step = int(state["step"])
        except (TypeError, KeyError, ValueError) as err:  # missing fields, or fields this code does not know
            raise ValueError(f"{ckpt}: not a checkpoint of this code's model ({type(err).__name__}: {err})") from None
        _fill(model, lambda: model.load_state_dict(state["model"]), ckpt)
        data, looked = _training_store(ckpt, state)
        # Look next to the checkpoint only without an override: a lone checkpoint has no tokenizer there.
        tok = Path(tokenizer) if tokenizer is not None else _checkpoint_tokenizer(ckpt, data)
        loaded = LoadedModel(model, tok, state.get("tokenizer_sha256", ""), step, ckpt, data, looked)
    if tokenizer is not None:
        loaded.tokenizer_path = Path(tokenizer)
    _verify_tokenizer(loaded.tokenizer_path, loaded.tokenizer_sha256, loaded.source)
    loaded.model.to(device).eval()
    return loaded


def _load_export(folder: Path) -> LoadedModel:
    where = f"{folder / CONFIG}: not a model config"
    try:
        values = json.loads((folder / CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:  # missing, not UTF-8, not JSON
        raise ValueError(f"{where}: {err}") from None
    # Typed as a YAML config is: GPTConfig(**values) took a block_size of 8.0 (generate then failed on
    # it), let GPT() raise a TypeError traceback on a float width, and its own checks named no file.
    model = GPT(from_dict(GPTConfig, values, where))
    # load_model re-ties what save_model stored once, and is strict about missing/unexpected names.
    _fill(model, lambda: load_model(model, folder / WEIGHTS), folder)
    with safe_open(folder / WEIGHTS, framework="pt") as f:
        meta = f.metadata() or {}
    step = int(meta["step"]) if meta.get("step", "").isdigit() else None
    data = meta.get("data")
    return LoadedModel(model, folder / TOKENIZER, meta.get("tokenizer_sha256", ""), step, folder, data,
                       (data,) if data else ())


# What a folder may already hold that a training run or an export must not write into (see held_by).
HOLDS = {"store": f"a token store ({MANIFEST}, or the part-*-of-* folders of one)",
         "stores": f"token stores in its folders (*/{MANIFEST}: a data cache such as data_cache/)",
         "export": f"an exported model ({WEIGHTS})",
         "run": "a training run's files (checkpoints, config.yml, metrics.jsonl)"}
_RUN_FILES = (STATE_FILE, MARKER, "config.yml", "metrics.jsonl", ".lock")


def held_by(folder: Path) -> str | None:
    """Which of HOLDS `folder` holds, if any. A run's or an export's tokenizer.json would replace a
    token store's own (a --shard store's parts use its root's), which then no longer opens; `load`
    takes a folder with model.safetensors as the export, so an export in a run's folder would hide
    every later checkpoint (and one in a ckpt-* folder would go with it when pruned)."""
    if (folder / MANIFEST).is_file() or any((part / MANIFEST).is_file() for part in part_folders(folder)):
        return "store"
    if any(folder.glob(f"*/{MANIFEST}")):  # checkpoints and exports do not belong among the stores
        return "stores"
    if (folder / WEIGHTS).is_file():
        return "export"
    if any(folder.glob("ckpt-*")) or any((folder / name).exists() for name in _RUN_FILES):
        return "run"
    return None


def export(loaded: LoadedModel, out_dir: str | Path) -> Path:
    """Write `loaded` as an export folder (see the module docstring); returns the folder. An existing
    export is replaced; a store or a run directory is refused (see held_by)."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out}: exists and is not a folder")
    if (held := held_by(out)) in ("store", "stores", "run"):
        raise ValueError(f"{out}: holds {HOLDS[held]}; export into a folder of its own")
    out.mkdir(parents=True, exist_ok=True)
    meta = {"tokenizer_sha256": loaded.tokenizer_sha256, "source": str(loaded.source)}
    if loaded.step is not None:
        meta["step"] = str(loaded.step)
    if loaded.data is not None and (Path(loaded.data) / "manifest.json").is_file():
        meta["data"] = os.path.abspath(loaded.data)  # a store that exists, so bin/eval.py finds it from anywhere
    # The weights make a folder an export (load looks for them): the old ones go first and the new ones
    # come last, so a crash in between leaves no export rather than a new config beside old weights,
    # which loads as the wrong model wherever the shapes agree (another norm, position encoding, ...).
    tmp = out / f".{WEIGHTS}.tmp{os.getpid()}"
    for stale in out.glob(f".{WEIGHTS}.tmp*"):  # an export killed (-9) before its rename left it
        stale.unlink(missing_ok=True)
    try:
        # save_model, not save_file: it stores tied tensors (wte / lm_head) once instead of refusing them.
        save_model(loaded.model, str(tmp), metadata=meta)
        fsync_path(tmp)
        tokenizer = loaded.tokenizer_path.read_bytes()  # before anything is replaced: it may be out's own
        (out / WEIGHTS).unlink(missing_ok=True)
        fsync_dir(out)
        atomic_write_bytes(out / CONFIG, (json.dumps(dataclasses.asdict(loaded.model.cfg), indent=2) + "\n").encode())
        atomic_write_bytes(out / TOKENIZER, tokenizer)
        # safetensors writes 0600; the folder is meant to be shared, so the weights get config.json's mode.
        os.chmod(tmp, (out / CONFIG).stat().st_mode & 0o777)
        os.replace(tmp, out / WEIGHTS)
        fsync_dir(out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out

"""A trained GPT for inference: loaded from a training checkpoint or an exported folder, and exported.

An export folder holds no pickle at all:

    model.safetensors   the weights (a tied output projection is stored once), with metadata:
                        tokenizer_sha256, step, source (the checkpoint it came from)
    config.json         the GPTConfig fields: GPTConfig(**json.load(f))
    tokenizer.json      the tokenizer the ids come from

Checkpoints and exports may come from anyone, so neither is ever unpickled: checkpoints go through
train/checkpoint.py's weights_only loader, exports through safetensors and JSON. Whatever the
source, the tokenizer file used must have the sha256 the model was trained with, or loading
stops: another tokenizer's ids mean other things and the model would produce garbage.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import pickle
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_model, save_model

from model.config import GPTConfig
from model.gpt import GPT
from pipeline.store import StoreError, TokenStore, sha256_file
from train.checkpoint import load_checkpoint, resolve_checkpoint

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
    """The token store the model was trained on (checkpoints only; for bin/eval.py's default)."""


def _verify_tokenizer(path: Path, expected: str, source: Path) -> None:
    if not expected:
        raise TokenizerMismatch(f"{source} records no tokenizer sha256, so no tokenizer can be verified for it")
    actual = sha256_file(path)
    if actual != expected:
        raise TokenizerMismatch(
            f"tokenizer {path} has sha256 {actual[:12]}..., but {source} was trained with {expected[:12]}...: "
            "its token ids would mean other things. Use the tokenizer.json of the store the model was trained "
            "on (--tokenizer PATH)")


def _checkpoint_tokenizer(ckpt: Path, state: dict) -> Path:
    """The run directory's copy of the tokenizer, else the training store's own."""
    candidates = [ckpt.parent / TOKENIZER]
    # The store may have been moved or deleted since; the run directory's copy is the usual one anyway.
    with contextlib.suppress(StoreError, KeyError, TypeError):
        candidates.append(TokenStore(state["config"]["data"]).tokenizer_path)
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


def load(path: str | Path, device: str | torch.device = "cpu", tokenizer: str | Path | None = None) -> LoadedModel:
    """The model at `path` (a run directory -> its newest complete checkpoint, a checkpoint directory,
    or an export folder), in eval mode on `device`, with its verified tokenizer. `tokenizer`
    overrides where the tokenizer is looked for (it is verified all the same)."""
    path = Path(path)
    if (path / WEIGHTS).is_file():
        loaded = _load_export(path)
    else:
        ckpt = resolve_checkpoint(path)
        try:
            state = load_checkpoint(ckpt)
        except pickle.UnpicklingError as err:
            raise ValueError(f"{ckpt}: refused: it holds objects other than tensors and plain containers, and "
                             f"loading those would run code from the file ({str(err).splitlines()[0]})") from None
        model = GPT(GPTConfig(**state["model_config"]))
        _fill(model, lambda: model.load_state_dict(state["model"]), ckpt)
        loaded = LoadedModel(model, _checkpoint_tokenizer(ckpt, state), state.get("tokenizer_sha256", ""),
                             int(state["step"]), ckpt, state.get("config", {}).get("data"))
    if tokenizer is not None:
        loaded.tokenizer_path = Path(tokenizer)
    _verify_tokenizer(loaded.tokenizer_path, loaded.tokenizer_sha256, loaded.source)
    loaded.model.to(device).eval()
    return loaded


def _load_export(folder: Path) -> LoadedModel:
    try:
        cfg = GPTConfig(**json.loads((folder / CONFIG).read_text()))
    except (OSError, json.JSONDecodeError, TypeError) as err:
        raise ValueError(f"{folder / CONFIG}: not a model config: {err}") from None
    model = GPT(cfg)
    # load_model re-ties what save_model stored once, and is strict about missing/unexpected names.
    _fill(model, lambda: load_model(model, folder / WEIGHTS), folder)
    with safe_open(folder / WEIGHTS, framework="pt") as f:
        meta = f.metadata() or {}
    step = int(meta["step"]) if meta.get("step", "").isdigit() else None
    return LoadedModel(model, folder / TOKENIZER, meta.get("tokenizer_sha256", ""), step, folder)


def export(loaded: LoadedModel, out_dir: str | Path) -> Path:
    """Write `loaded` as an export folder (see the module docstring); returns the folder."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"tokenizer_sha256": loaded.tokenizer_sha256, "source": str(loaded.source)}
    if loaded.step is not None:
        meta["step"] = str(loaded.step)
    # save_model, not save_file: it stores tied tensors (wte / lm_head) once instead of refusing them.
    save_model(loaded.model, str(out / WEIGHTS), metadata=meta)
    (out / CONFIG).write_text(json.dumps(dataclasses.asdict(loaded.model.cfg), indent=2) + "\n")
    shutil.copyfile(loaded.tokenizer_path, out / TOKENIZER)
    return out

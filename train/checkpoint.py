"""Atomic, self-describing checkpoints: `run_dir/ckpt-<tag>/state.pt` plus a `COMPLETE` marker.

Write order is the invariant: state.pt goes to a temp name, is fsynced and renamed, and only then is
`COMPLETE` (JSON: step, tag, tokens_seen) written, atomically. A directory without COMPLETE is a
crash leftover that nothing loads and the next save removes. Tags are the zero-padded step
(`00001000`), with `_e<epoch>` for the checkpoint that closes an epoch (`00001000_e2`).

Pruning keeps the newest `keep_last` complete checkpoints, epoch-end ones counted like any other, so
disk use is bounded whatever the epoch length.

Checkpoints are untrusted input: they are loaded with `weights_only=True` only, so a state holds
tensors and plain containers of str/int/float/bool/None and nothing else (see `rng_state`).

State keys, as the trainer writes them:
    model                  the raw module's state_dict (no `_orig_mod.` / `module.` prefixes)
    model_config           GPTConfig fields as a dict
    config                 the whole resolved TrainConfig as a dict
    step, tokens_seen      optimizer steps done, tokens consumed over all ranks
    optimizer, scaler      their state_dicts (scaler None without fp16)
    sampler, rng           lists indexed by rank: each rank's data-position state and RNG states
    world_size             ranks that wrote it
    tokenizer_sha256, store_manifest_sha256   what the ids mean and which store they came from
    stats                  skip total, current run of skips and the open log window's loss sums
                           (train/step_stats.py); absent from older checkpoints, which resume with zeros
    eval_windows           the size of the run's fixed eval set, which a resume keeps (absent from older ones)
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import pickle
import random
import re
import shutil
import time
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
import yaml

from common.files import atomic_write_bytes, fsync_dir
from common.lock import exclusive_lock

MARKER = "COMPLETE"
# Model fields that may differ on resume: dropout is a training choice, not part of the weights; the
# others choose how the same function is computed (kernels, the residual stream's dtype), and a
# checkpoint written before a field existed lacks it.
_RESUMABLE_MODEL_FIELDS = {"dropout", "bf16_residual", "fused_loss", "fused_swiglu", "fused_rope"}
STATE = "state.pt"
_DIR_RE = re.compile(r"^ckpt-(\d+)(?:_e(\d+))?$")


def checkpoint_tag(step: int, epoch: int | None = None) -> str:
    return f"{step:08d}" + (f"_e{epoch}" if epoch is not None else "")


def tag_epoch(ckpt: Path) -> int | None:
    """The epochs completed by an epoch-end checkpoint, from its name (`ckpt-00001000_e2`: 2), else None."""
    m = _DIR_RE.match(ckpt.name)
    return int(m.group(2)) if m and m.group(2) else None


def save_checkpoint(run_dir: str | Path, tag: str, state: dict[str, Any], keep_last: int = 0) -> Path:
    """Write `state` as run_dir/ckpt-<tag>, marker last; then prune to the newest keep_last (0 = all)."""
    run_dir = Path(run_dir)
    ckpt = run_dir / f"ckpt-{tag}"
    try:
        if ckpt.exists():  # an older incomplete or superseded copy of this very tag
            shutil.rmtree(ckpt)
        ckpt.mkdir(parents=True)
        tmp = ckpt / f"{STATE}.tmp"
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, ckpt / STATE)
        fsync_dir(ckpt)
        marker = {"step": int(state["step"]), "tag": tag, "tokens_seen": int(state.get("tokens_seen", 0)),
                  "time": time.time()}
        atomic_write_bytes(ckpt / MARKER, (json.dumps(marker) + "\n").encode())
    except BaseException as err:
        # Nothing would load the partial copy, and on a full disk it holds the space the next try needs.
        shutil.rmtree(ckpt, ignore_errors=True)
        cause = _os_error_in(err)
        if cause is None:  # not the disk (a state that does not pickle, Ctrl-C): as it was raised
            raise
        raise OSError(_write_failure(ckpt, cause)) from err
    fsync_dir(run_dir)
    _prune(run_dir, keep_last, keep=ckpt)
    return ckpt


def _os_error_in(err: BaseException) -> OSError | None:
    """The OSError behind `err`: torch.save reports a failed write as its own RuntimeError (`[enforce
    fail at inline_container.cc:...] unexpected pos`), with the OSError only in the exception chain."""
    seen: BaseException | None = err
    while seen is not None and not isinstance(seen, OSError):
        seen = seen.__cause__ or seen.__context__
    return seen


def _write_failure(ckpt: Path, cause: OSError) -> str:
    fix = "fix that"
    if cause.errno in (errno.ENOSPC, errno.EDQUOT):
        fix = ("free space there or lower keep_last (old checkpoints are removed only after a new one is complete, "
               "so keep_last=K needs room for K+1)")
    return (f"cannot write checkpoint {ckpt}: {cause.strerror or cause}; {fix}, then rerun the same command to "
            "continue from the newest complete checkpoint")


def marker_step(ckpt: Path) -> int | None:
    """The step recorded in a checkpoint's COMPLETE marker, or None if it is incomplete or unreadable."""
    try:
        return int(json.loads((ckpt / MARKER).read_text())["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints in run_dir, oldest first (by step, then tag)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = []
    for path in run_dir.iterdir():
        if path.is_dir() and _DIR_RE.match(path.name) and (step := marker_step(path)) is not None:
            found.append((step, path.name, path))
    return [path for _, _, path in sorted(found)]


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    ckpts = list_checkpoints(run_dir)
    return ckpts[-1] if ckpts else None


def _prune(run_dir: Path, keep_last: int, keep: Path) -> None:
    """Drop complete checkpoints beyond the newest keep_last, and incomplete leftovers of crashes.

    Only rank 0 saves, so nothing else is writing a checkpoint directory while this runs.
    """
    complete = list_checkpoints(run_dir)
    doomed = complete[:-keep_last] if keep_last > 0 else []
    doomed += [p for p in run_dir.iterdir() if p.is_dir() and _DIR_RE.match(p.name) and p not in complete]
    for path in doomed:
        if path != keep:
            # Marker first: rmtree may delete state.pt before it, and a kill in between would leave
            # a "complete" checkpoint without its state.
            (path / MARKER).unlink(missing_ok=True)
            shutil.rmtree(path, ignore_errors=True)


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory from a run dir (its newest complete one), a ckpt dir or its state.pt."""
    path = Path(path)
    if not path.exists():  # before the name test: a pruned ckpt-* folder is no "cut off" checkpoint
        raise FileNotFoundError(f"{path}: does not exist (expected a run directory, a ckpt-* folder in one or "
                                f"its {STATE}; `make train` writes runs/tiny)")
    if path.is_file() and path.name == STATE:
        path = path.parent
    if (path / STATE).exists() or _DIR_RE.match(path.name):
        if marker_step(path) is None:
            raise FileNotFoundError(f"{path}: incomplete checkpoint (no {MARKER} marker); it was cut off while saving")
        return path
    latest = latest_checkpoint(path)
    if latest is None:
        raise FileNotFoundError(f"{path}: no complete checkpoint (ckpt-*/{MARKER}) found")
    return latest


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded: truncated or corrupt despite its marker, or holding objects
    that weights_only loading refuses."""


# How many times a run directory's newest checkpoint is chosen again when it vanishes before it is read.
_CHOOSE_TRIES = 5


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint (run dir -> its newest complete one). weights_only=True always: a checkpoint
    may come from anywhere, and full unpickling would run whatever code it names."""
    return open_checkpoint(path, map_location)[1]


def open_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[Path, dict[str, Any]]:
    """(the checkpoint directory, its state), as load_checkpoint.

    A training run writing to the same run directory may prune (keep_last) the newest complete
    checkpoint between its choice and the read: it failed then as a missing, "cut off" or unreadable
    checkpoint. A checkpoint chosen here rather than named by the caller, and gone (marker first, as
    _prune removes it), is chosen again, at most _CHOOSE_TRIES times."""
    path = Path(path)
    for _ in range(_CHOOSE_TRIES):
        ckpt = resolve_checkpoint(path)
        try:
            return ckpt, _read_state(ckpt, map_location)
        except (FileNotFoundError, CheckpointError):
            if ckpt.parent != path or marker_step(ckpt) is not None:  # named by the caller, or really unreadable
                raise
    raise FileNotFoundError(
        f"{path}: its newest complete checkpoint was removed before it could be read, {_CHOOSE_TRIES} times in a "
        "row: a training run writing to this run directory prunes old checkpoints (keep_last) faster than they "
        "can be read; wait for it to save less often or finish, or pass a checkpoint directory copied out of it")


def _read_state(ckpt: Path, map_location: str | torch.device) -> dict[str, Any]:
    ckpt = resolve_checkpoint(ckpt)
    try:
        return torch.load(ckpt / STATE, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(f"{ckpt}: refused: it holds objects other than tensors and plain containers, and "
                              f"loading those would run code from the file ({str(err).splitlines()[0]})") from None
    except (RuntimeError, EOFError, OSError) as err:  # truncated or corrupt despite its COMPLETE marker
        raise CheckpointError(f"{ckpt}: not a readable checkpoint ({str(err).splitlines()[0]})") from None


def lock_run_dir(run_dir: str | Path) -> IO[str] | None:
    """Create run_dir and hold its lock until the returned file is closed; None if another run holds
    it. Two runs in one out_dir would prune each other's checkpoints and interleave metrics.jsonl."""
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    return exclusive_lock(Path(run_dir) / ".lock")


class ResumeRefused(RuntimeError):
    """A checkpoint that must not be continued here: another tokenizer, store, model, data stream or
    world size, or a run directory that already holds a later history."""


def choose_checkpoint(run_dir: str | Path, resume: str) -> Path | None:
    """The checkpoint a run in run_dir continues from as `resume` (TrainConfig.resume) says, or None
    for a fresh start. Raises ResumeRefused or FileNotFoundError."""
    run_dir = Path(run_dir)
    if resume == "auto":
        return latest_checkpoint(run_dir)
    if resume == "none":
        if latest_checkpoint(run_dir) is not None:
            raise ResumeRefused(f"{run_dir} already holds checkpoints; resume=auto continues that run, or pick "
                                "another out_dir for a new one")
        return None
    held = list_checkpoints(run_dir)
    if held and _last_run_resumed(run_dir, resume):
        # An earlier try of this very command wrote them: rerunning a stopped run's command continues
        # it, whatever became of the checkpoint it started from (pruned, or followed by later ones).
        return held[-1]
    source = resolve_checkpoint(resume)
    if held and not is_inside(source, run_dir):
        raise ResumeRefused(
            f"{run_dir} holds checkpoints of another history ({', '.join(p.name for p in held)}): continuing "
            f"{source} there would mix two in its checkpoints and metrics.jsonl. resume=auto continues the folder's "
            "own; for this branch pick another out_dir, or delete those checkpoints first")
    # Branching from an older checkpoint into the same run dir would interleave two histories there,
    # and resume=auto (or a keep_last prune) would later pick among both.
    step = marker_step(source)
    later = [p for p in held if (marker_step(p) or 0) > step]
    if later:
        raise ResumeRefused(
            f"{run_dir} holds checkpoints past step {step} of {source} ({', '.join(p.name for p in later)}): "
            "continuing from it there would mix two histories, and resume=auto would later pick the old one's. "
            "Continue in another out_dir, or delete those checkpoints first")
    return source


def _last_run_resumed(run_dir: Path, resume: str) -> bool:
    """Whether the last run that trained in run_dir (its config.yml) was given the same resume path."""
    try:
        saved = yaml.safe_load((run_dir / "config.yml").read_text())
        return os.path.abspath(saved["resume"]) == os.path.abspath(resume)
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return False


def is_inside(ckpt: Path, run_dir: str | Path) -> bool:
    """Whether checkpoint folder `ckpt` is one of run_dir's own."""
    return ckpt.resolve().parent == Path(run_dir).resolve()


def global_batch(state: dict[str, Any]) -> int:
    """Sequences per optimizer step in the run that wrote checkpoint `state`."""
    return state["world_size"] * state["config"]["micro_batch"] * state["config"]["grad_accum"]


def grad_accum_for_world(state: dict[str, Any], world_size: int, micro_batch: int, grad_accum: int) -> tuple[int, str]:
    """The grad_accum that keeps the checkpoint's global batch (sequences per optimizer step), so the
    optimizer and LR schedule see the same batch at another world size; and what to log about it.
    Where `world_size` x `micro_batch` does not divide that batch, `grad_accum` stays, with a warning."""
    saved = global_batch(state)
    accum, rest = divmod(saved, world_size * micro_batch)
    if not accum or rest:
        return grad_accum, (f"warning: the checkpoint's global batch of {saved} sequences is not a multiple of "
                            f"{world_size} rank(s) x micro_batch {micro_batch}: continuing with "
                            f"{world_size * micro_batch * grad_accum} sequences per step")
    if accum == grad_accum:
        return accum, ""
    if world_size == state["world_size"]:
        return accum, (f"grad_accum {accum} instead of {grad_accum}: allow_world_size_change=true keeps the "
                       f"checkpoint's global batch of {saved} sequences")
    return accum, (f"{world_size} rank(s) instead of {state['world_size']}: grad_accum {accum} keeps the global "
                   f"batch of {saved} sequences")


def check_compatible(state: dict[str, Any], store: Any, cfg: Any, world_size: int) -> None:
    """Refuse, with the reason and the way out, to continue a checkpoint under different data, world
    size or optimizer. `store` is a TokenStore and `cfg` a TrainConfig (typed loosely to stay import-light)."""
    fresh = "start a new run instead (another out_dir, or resume=none in an empty one)"
    if state["tokenizer_sha256"] != store.tokenizer_sha256:
        raise ResumeRefused(
            f"the checkpoint was trained with tokenizer sha256 {state['tokenizer_sha256'][:12] or '(none)'}, but "
            f"{store.root} uses {store.tokenizer_sha256[:12] or '(none)'}: its token ids mean other things; {fresh}")
    if state["store_manifest_sha256"] != store.manifest_sha256:
        raise ResumeRefused(
            f"the checkpoint was trained on another token store (manifest sha256 "
            f"{state['store_manifest_sha256'][:12]}, {store.root} has {store.manifest_sha256[:12]}): its data "
            f"position does not apply; resume with data=<the original store>, or {fresh}")
    if state["world_size"] != world_size and not cfg.allow_world_size_change:
        raise ResumeRefused(
            f"the checkpoint was written by {state['world_size']} process(es), this run has {world_size}: the "
            "per-rank data streams and RNG states do not carry over. Pass allow_world_size_change=true to "
            "continue anyway (a different data order from then on), or run with the original process count")
    # Older checkpoints lack the key: AdamW was the only optimizer then.
    if (saved := state.get("config", {}).get("optimizer", "adamw")) != cfg.optimizer:
        raise ResumeRefused(
            f"the checkpoint was trained with optimizer={saved}, this run has optimizer={cfg.optimizer}: its "
            f"optimizer state does not carry over; resume with optimizer={saved}, or {fresh}")
    # The data position (sampler state) only means something in the stream it was drawn from.
    stream = state["sampler"][0]
    settings = {"seed": ("seed", cfg.seed), "sampler_mode": ("mode", cfg.sampler_mode),
                "align_bos": ("align_bos", cfg.align_bos)}
    changed = [f"{name}: {stream[key]!r} -> {value!r}" for name, (key, value) in settings.items()
               if stream.get(key, value) != value]
    if changed:
        raise ResumeRefused(
            f"the checkpoint's data stream was drawn with other settings ({', '.join(changed)}): its data "
            f"position does not apply to this one; resume with the original values, or {fresh}")
    ours = dataclasses.asdict(cfg.model)
    diff = sorted(k for k in set(ours) | set(state["model_config"])
                  if k not in _RESUMABLE_MODEL_FIELDS and ours.get(k) != state["model_config"].get(k))
    if diff:
        changes = ", ".join(f"model.{k}: {state['model_config'].get(k)!r} -> {ours.get(k)!r}" for k in diff)
        # The way back, as overrides: a preset that changed shape (gpt-45m on 2026-11-28) would otherwise
        # leave a run begun under the old one to be restarted.
        # Only keys both configs have: one the checkpoint lacks has no value to give back, and one the
        # config no longer has is no option to give.
        overrides = " ".join(f"model.{k}={_as_override(state['model_config'][k])}" for k in diff
                             if k in state["model_config"] and k in ours)
        way_back = f"resume with {overrides}, or " if overrides else ""
        raise ResumeRefused(f"the checkpoint's model differs from the configured one ({changes}); {way_back}{fresh}")


def _as_override(value: Any) -> str:
    """A config value as the command line's key=value reads it back (YAML: false, null, 0.1)."""
    return value if isinstance(value, str) else json.dumps(value)


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state(device: torch.device) -> dict[str, Any]:
    """This process's RNG states in weights_only-loadable form (numpy's array becomes a list)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
    }


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"].cpu())
    if device.type == "cuda" and state["cuda"] is not None:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)

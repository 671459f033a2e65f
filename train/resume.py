"""Resume: which checkpoint a run continues from, what a checkpoint holds of a Trainer, and putting
it back (train/checkpoint.py writes and reads the files).

Exact resume rests on three things: the sampler state is that of the last batch consumed (the
Prefetcher's), every RNG is saved per rank, and the LR is a pure function of the step. The skip
counts and the open log window's sums are saved too, so a resumed run logs what the straight one does.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from common.config import to_dict
from train import distributed as D
from train.checkpoint import (
    CheckpointError,
    ResumeRefused,
    check_compatible,
    choose_checkpoint,
    global_batch,
    grad_accum_for_world,
    load_checkpoint,
    marker_step,
    rng_state,
    seed_all,
    set_rng_state,
    tag_epoch,
)
from train.optim import load_optimizer_state

if TYPE_CHECKING:
    from train.trainer import Trainer


def resume_source(trainer: Trainer) -> tuple[Path | None, bool]:
    """The checkpoint `resume` names (None: a fresh start) and whether it already ends the run (at
    max_steps, or at the end of the last of `epochs`, which its name says), known before
    init_batch: a run with nothing left to do skips the probe, on a GPU the first compile, tens of
    seconds spent only to say "nothing to do". Rank 0 decides and every rank gets its answer, an
    error included: raised on rank 0 alone, it would leave the others waiting for the process
    group's timeout."""
    answer: tuple[Path | None, bool] | Exception = (None, False)
    cfg = trainer.cfg
    if trainer.dist.is_main:
        try:
            source = choose_checkpoint(trainer.run_dir, cfg.resume)
            done = source is not None and (0 < cfg.max_steps <= (marker_step(source) or 0)
                                           or 0 < cfg.epochs <= (tag_epoch(source) or 0))
            answer = source, done
        except (ResumeRefused, OSError) as err:
            answer = err
    answer = D.broadcast_object(answer)
    if isinstance(answer, Exception):
        raise answer
    return answer


def checkpoint_state(trainer: Trainer) -> dict[str, Any] | None:
    """What a checkpoint holds (train/checkpoint.py lists the keys), on rank 0; None on the others,
    which take part in gathering every rank's sampler and RNG state."""
    samplers = D.all_gather_objects(trainer.prefetcher.state_dict())
    rngs = D.all_gather_objects(rng_state(trainer.device))
    if not trainer.dist.is_main:
        return None
    return {
        "model": trainer.raw.state_dict(),
        "model_config": to_dict(trainer.cfg.model),
        "config": to_dict(trainer.cfg),
        "step": trainer.step,
        "tokens_seen": trainer.tokens_seen,
        "optimizer": trainer.optimizer.state_dict(),
        "scaler": trainer.scaler.state_dict() if trainer.scaler else None,
        "sampler": samplers,
        "rng": rngs,
        "world_size": trainer.dist.world_size,
        "tokenizer_sha256": trainer.store.tokenizer_sha256,
        "store_manifest_sha256": trainer.store.manifest_sha256,
        "stats": trainer.stats.state_dict(),  # as of the read that every checkpoint step makes
        "eval_windows": trainer.eval_windows,
    }


def restore(trainer: Trainer, source: Path | None) -> int:
    """Load the checkpoint `source` (from resume_source, the same on every rank), if any; returns
    its step (-1 for a fresh start)."""
    cfg = trainer.cfg
    if source is None:
        return -1
    try:
        state = load_checkpoint(source)
    except CheckpointError as err:
        raise ResumeRefused(f"{err}; delete that folder to continue from the checkpoint before it") from None
    check_compatible(state, trainer.store, cfg, trainer.dist.world_size)
    trainer.raw.load_state_dict(state["model"])
    load_optimizer_state(trainer.optimizer, state["optimizer"])
    if trainer.scaler is not None and state["scaler"] is not None:
        trainer.scaler.load_state_dict(state["scaler"])
    trainer.step, trainer.tokens_seen = int(state["step"]), int(state["tokens_seen"])
    if "stats" in state:  # older checkpoints lack it: their skip count and log window start at zero
        trainer.stats.load_state_dict(state["stats"])
    # The sampler's state counts the global stream (random: step; epoch: windows handed out), so
    # rank 0's continues it at any world size. Per-rank RNG streams cannot be mapped.
    same_world = state["world_size"] == trainer.dist.world_size
    try:
        trainer.prefetcher.load_state_dict(state["sampler"][trainer.dist.rank if same_world else 0])
    except ValueError as err:  # check_compatible compared the settings, so the state itself is off
        raise ResumeRefused(f"{source}: its data position does not fit this run's sampler ({err})") from None
    if same_world:
        set_rng_state(state["rng"][trainer.dist.rank], trainer.device)
    else:
        seed_all(cfg.seed + 1 + trainer.dist.rank + 1_000_003 * trainer.step)
    # Also at the same world size: once a run went on at another one, its checkpoints hold a grad_accum
    # that the rerun command does not say, and taking the command's changed the global batch of a
    # rerun after a kill (another loss curve and LR schedule than the run that was not stopped).
    if not same_world or cfg.allow_world_size_change:
        cfg.grad_accum, note = grad_accum_for_world(state, trainer.dist.world_size, cfg.micro_batch, cfg.grad_accum)
        if note:
            trainer.log(note)
    elif (saved := global_batch(state)) != (now := trainer.dist.world_size * cfg.micro_batch * cfg.grad_accum):
        # Allowed (a deliberate change), but not silently: the run then differs from the one not stopped.
        trainer.log(f"warning: {now} sequences per step (ranks x micro_batch x grad_accum), the checkpoint's run "
                    f"took {saved}: the run goes on at another batch (allow_world_size_change=true keeps {saved})")
    _keep_eval_set(trainer, state)
    trainer.log(f"resumed from {source} at step {trainer.step}")
    trainer.resumed_from = source
    return trainer.step


def _keep_eval_set(trainer: Trainer, state: dict[str, Any]) -> None:
    """The checkpoint's eval set size, unless eval_batches changed: sized by this command's micro_batch,
    a resume with another one evaluated other windows, and val_loss jumped where the run went on."""
    saved, cfg = state.get("eval_windows"), trainer.cfg
    # Older checkpoints lack it; a run that evaluated nothing so far has no set to keep.
    if not saved or saved == trainer.eval_windows or not cfg.eval_batches:
        return
    if state["config"].get("eval_batches") == cfg.eval_batches:
        trainer.eval_windows = saved
        trainer.log(f"eval: the checkpoint's set of {saved} windows (eval_batches x micro_batch as the run "
                    "began), so val_loss stays comparable")
    else:
        trainer.log(f"warning: eval_batches {cfg.eval_batches} (was {state['config'].get('eval_batches')}): a new "
                    f"eval set of {trainer.eval_windows} windows; val_loss before and after step {trainer.step} "
                    "is over different windows")

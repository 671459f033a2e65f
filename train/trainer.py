"""The training loop: one Trainer per process, the same code on a CPU, one GPU or many under torchrun.

Per optimizer step every rank runs `grad_accum` micro-batches (DDP's gradient all-reduce only on the
last, via no_sync), clips, and all-reduces one small tensor holding the loss, a non-finite flag and
the gradient norm. That flag decides on the device, identically on every rank, whether the step is
applied or skipped, so ranks can never diverge on it, and no step waits for the host
(train/step_stats.py); under fp16 the GradScaler decides on the host instead, every step.

What a checkpoint holds and how a run resumes exactly from it: train/resume.py.
"""

from __future__ import annotations

import contextlib
import gc
import math
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml

from common.config import to_dict
from common.precision import autocast, bf16_supported
from model import GPT
from pipeline.store import TokenStore
from train import distributed as D
from train.checkpoint import checkpoint_tag, is_inside, latest_checkpoint, save_checkpoint, seed_all
from train.config import TrainConfig
from train.data import check_windows, eval_batches
from train.init_batch import fit_micro_batch
from train.metrics import MetricsLog, eval_line, eval_record, peak_flops, progress_line
from train.optim import build_optimizer, lr_at, set_lr
from train.prefetch import Prefetcher
from train.resume import checkpoint_state, restore, resume_source
from train.step_stats import StepStats, TrainingAborted, check_skips

__all__ = ["Trainer", "TrainingAborted"]


class Trainer:
    def __init__(self, cfg: TrainConfig, dist: D.DistInfo, log: Callable[[str], None] = print):
        cfg.validate()
        self.cfg, self.dist, self.device = cfg, dist, dist.device
        self.log = log if dist.is_main else (lambda _msg: None)
        self.store = TokenStore(cfg.data)
        self.run_dir = Path(cfg.out_dir)
        cfg.model = cfg.model_for_store(self.store.vocab_size, self.log)
        cfg.resolve_auto(self.device.type, bf16_supported(self.device))
        self.ptdtype = getattr(torch, cfg.dtype)
        self.prefetcher: Prefetcher | None = None
        self.metrics: MetricsLog | None = None
        self._matmul_precision = torch.get_float32_matmul_precision()  # close() puts it back
        if self.device.type == "cuda":
            torch.set_float32_matmul_precision("high")  # TF32 matmuls for whatever runs outside autocast
        try:
            self._setup()
        except BaseException:  # a refused resume, a store too small, an OOM: nothing of it may outlive this
            self.close()
            raise

    def _setup(self) -> None:
        """Model, optimizer, init_batch, data and resume: everything that may still refuse the run."""
        cfg, dist = self.cfg, self.dist
        self.scaler = torch.amp.GradScaler(self.device.type) if self.ptdtype is torch.float16 else None
        started = time.perf_counter()
        seed_all(cfg.seed)  # the same initial weights on every rank (DDP also broadcasts rank 0's)
        self.raw = GPT(cfg.model).to(self.device)
        # dynamic=False: init_batch probes several batch sizes, and a dynamic-shape graph would be slower.
        self.model = torch.compile(self.raw, dynamic=False) if cfg.compile else self.raw
        self.optimizer = build_optimizer(self.raw, cfg)
        configured_micro_batch = cfg.micro_batch
        source, at_max_steps = resume_source(self)
        # Built once, here: with align_bos the train sampler reads the split's whole document index.
        sampler = check_windows(self.store, cfg, dist.world_size, dist.rank)
        if cfg.init_batch and not at_max_steps:
            self._init_batch()
            # The batch size only says how many windows each draw takes (the stream's position is kept
            # in steps and windows), so this is the sampler that the fitted micro_batch would build.
            sampler.batch_size = cfg.micro_batch

        seed_all(cfg.seed + 1 + dist.rank)  # dropout etc. differ per rank; a resume overwrites these
        self.prefetcher = Prefetcher(sampler, self.device)
        self.eval_windows = cfg.eval_batches * configured_micro_batch

        self.step, self.tokens_seen, self.stats = 0, 0, StepStats(self.device)
        self.resumed_from: Path | None = None
        resumed = restore(self, source)  # may keep the checkpoint's eval_windows
        self.eval_batches = eval_batches(self.store, cfg, dist.rank, dist.world_size, self.device, self.eval_windows)
        self.tokens_per_step = cfg.micro_batch * cfg.grad_accum * dist.world_size * cfg.model.block_size
        self.total_steps = self._total_steps()  # after the resume: counted from the data position
        self._start_step = self.step
        self.init_s = time.perf_counter() - started  # includes init_batch's probe, i.e. the first compile
        self.epoch = self.prefetcher.epoch
        # Compile first, then wrap. Compiling the DDP module instead splits the graph at its buckets to
        # overlap the all-reduce with the backward: ~1 ms a step on NVLink, for a first compile ~3x as
        # long (72 s against 25 s for a small model on 2 CPU ranks).
        self.ddp = D.wrap_ddp(self.model, self.device) if dist.distributed else None
        # A run with nothing left to do announces and writes nothing (fit() says so): its files stay as
        # its last real run left them, metrics.jsonl not even rewritten.
        finished = self._finished()
        writes = dist.is_main and not finished
        if writes:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        # A branch from another run's checkpoint keeps none of the records in out_dir: no step up to the
        # branch point was this history's there.
        branched = self.resumed_from is not None and not is_inside(self.resumed_from, self.run_dir)
        self.metrics = MetricsLog(self.run_dir / "metrics.jsonl", -1 if branched else resumed) if writes else None
        if not finished:
            self._announce(resumed)

    # ---- setup -------------------------------------------------------------------------------

    def autocast(self) -> contextlib.AbstractContextManager:
        return autocast(self.device.type, self.cfg.dtype)

    def _probe(self, micro_batch: int) -> None:
        """One full step at this micro-batch: forward, backward, optimizer (its state is allocated on
        the first step, so only a step shows the peak). No collectives: ranks may OOM at different sizes."""
        T = self.cfg.model.block_size
        # Separate tensors, as in training: inputs sharing storage would compile an aliased-input graph.
        x, y = (torch.randint(0, self.cfg.model.vocab_size, (micro_batch, T), device=self.device) for _ in "xy")
        with self.autocast():
            _, loss = self.model(x, y, return_logits=False)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _init_batch(self) -> None:
        """Find the micro-batch that fits (minimum over ranks) and raise grad_accum to keep the global
        batch; then put back the initial weights and a fresh optimizer, as if no probe had run."""
        initial = {k: v.detach().clone() for k, v in self.raw.state_dict().items()}

        def cleanup() -> None:
            self.optimizer.zero_grad(set_to_none=True)
            gc.collect()
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

        candidate = self.cfg.micro_batch
        fitted = fit_micro_batch(candidate, self._probe, cleanup)
        fitted = int(D.all_reduce(torch.tensor([fitted], device=self.device), "min").item())
        self.raw.load_state_dict(initial)
        del initial
        self.optimizer = build_optimizer(self.raw, self.cfg)
        cleanup()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        if fitted < candidate:
            self.cfg.micro_batch, self.cfg.grad_accum = fitted, self.cfg.grad_accum * (candidate // fitted)
            self.log(f"init_batch: micro_batch {candidate} does not fit; using micro_batch {fitted} x "
                     f"grad_accum {self.cfg.grad_accum} (same global batch)")

    def _total_steps(self) -> int:
        """max_steps, or the step in which the last of `epochs` passes ends if that comes first: the
        LR schedule's end and the ETA's. The sampler counts the batches left exactly (each epoch's
        grid differs with its phase); an epoch ending inside a step ends with that step, whose
        remaining micro-batches come from the next epoch."""
        cfg = self.cfg
        if not cfg.epochs:
            return cfg.max_steps
        micro_batches_left = self.prefetcher.sampler.batches_until(cfg.epochs)
        steps = self.step + -(-micro_batches_left // cfg.grad_accum)  # ceil: a partial step still runs
        return min(steps, cfg.max_steps) if cfg.max_steps else steps

    def _announce(self, resumed: int) -> None:
        cfg = self.cfg
        self.log("config:\n" + yaml.safe_dump(to_dict(cfg), sort_keys=False).rstrip())
        total, core = self.raw.num_params(non_embedding=False), self.raw.num_params()
        self.log(f"parameters: {total:,}" + (f" ({core:,} without lookup-only embeddings)" if core != total else ""))
        self.log(f"device {self.device} x {self.dist.world_size} | dtype {cfg.dtype} | compile {cfg.compile} | "
                 f"{self.tokens_per_step:,} tokens/step | {self.total_steps} steps")
        if cfg.warmup_steps >= self.total_steps:
            self.log(f"warning: warmup_steps {cfg.warmup_steps} >= the run's {self.total_steps} steps: the LR "
                     f"never reaches lr {cfg.lr:g} nor decays to min_lr")
        # The optimizer's LR is the checkpoint's last step's: a longer run's cosine, or another
        # lr_schedule, is another curve.
        last = resumed - 1
        if resumed > 0 and not math.isclose(ran := self.optimizer.param_groups[0]["lr"],
                                            now := lr_at(last, cfg, self.total_steps), rel_tol=1e-9):
            self.log(f"warning: the LR schedule is not the checkpoint's (max_steps, epochs, lr, min_lr, "
                     f"warmup_steps, lr_schedule or decay_frac changed): step {last} ran at lr {ran:.3g}, which "
                     f"it puts at {now:.3g}, so the LR jumps there")
        if not self.dist.is_main:
            return
        (self.run_dir / "config.yml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        if self.store.tokenizer_path.is_file():
            shutil.copyfile(self.store.tokenizer_path, self.run_dir / "tokenizer.json")
        self.metrics.write({"step": max(resumed, 0), "event": "resume" if resumed >= 0 else "start",
                            "world_size": self.dist.world_size, "micro_batch": cfg.micro_batch,
                            "grad_accum": cfg.grad_accum, "params": total, "init_s": self.init_s})

    # ---- the loop ------------------------------------------------------------------------------

    def train_step(self) -> torch.Tensor:
        """Queue one optimizer step over grad_accum micro-batches without waiting for the device.
        Returns [mean loss over ranks, grad norm, skipped (0/1)] as a device tensor. A non-finite loss
        or grad norm on any rank skips the step on every rank, decided on the device: the fused AdamW
        takes the all-reduced flag as `found_inf` and then leaves weights, moments and step count alone
        (with optimizer=muon the flag is read on the host: Muon has no found_inf, train/muon.py)."""
        cfg = self.cfg
        set_lr(self.optimizer, lr_at(self.step, cfg, self.total_steps))
        model = self.ddp or self.model
        loss_sum = torch.zeros((), device=self.device)
        for micro in range(cfg.grad_accum):
            x, y = self.prefetcher.next()
            sync = self.ddp is None or micro == cfg.grad_accum - 1
            with contextlib.nullcontext() if sync else self.ddp.no_sync():
                with self.autocast():
                    _, loss = model(x, y, return_logits=False)
                loss = loss / cfg.grad_accum
                (self.scaler.scale(loss) if self.scaler else loss).backward()
            loss_sum += loss.detach()
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        gnorm = torch.nn.utils.clip_grad_norm_(self.raw.parameters(), cfg.grad_clip or float("inf"))
        # With fp16 an overflowing gradient is the GradScaler's business (it skips and lowers the
        # scale); only a non-finite loss counts as bad then.
        bad = ~torch.isfinite(loss_sum) if self.scaler else ~(torch.isfinite(loss_sum) & torch.isfinite(gnorm))
        # gnorm is the same on every rank (gradients were all-reduced), so its sum / world_size is it.
        summed = D.all_reduce(torch.stack([loss_sum.float(), bad.float(), gnorm.float()])) / self.dist.world_size
        skipped = (summed[1] > 0).float()
        if self.scaler is not None:
            # GradScaler owns found_inf for its own overflow skips, so fp16 decides on the host.
            if not skipped.item():
                self.scaler.step(self.optimizer)
            self.scaler.update()  # also after a skip: unscale_ was called and must be closed
        else:
            self.optimizer.found_inf = skipped
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.tokens_seen += self.tokens_per_step
        return torch.stack([summed[0], summed[2], skipped])

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean loss over the fixed validation windows; each rank runs its share, then all-reduce."""
        self.model.eval()
        total = torch.zeros(2, device=self.device)
        for x, y in self.eval_batches:
            with self.autocast():
                _, loss = self.model(x, y, return_logits=False)
            windows = torch.full((), float(len(x)), device=self.device)
            total += torch.stack([loss.float() * windows, windows])
        self.model.train()
        loss_sum, count = D.all_reduce(total).tolist()
        return loss_sum / max(count, 1.0)

    def _eval_and_log(self) -> dict[str, Any]:
        rec = eval_record(self.step, self.tokens_seen, self.evaluate(), self.store.bytes_per_token("val"))
        self.log(eval_line(rec))
        if self.metrics:
            self.metrics.write(rec)
        return rec

    def save(self, epoch_end: bool = False) -> Path | None:
        """Checkpoint on rank 0; every rank takes part in gathering the state."""
        state = checkpoint_state(self)
        if state is None:
            return None
        tag = checkpoint_tag(self.step, self.epoch if epoch_end else None)
        path = save_checkpoint(self.run_dir, tag, state, self.cfg.keep_last)
        self.log(f"saved {path}")
        return path

    def _finished(self) -> bool:
        """The epoch counter ends an epochs run (total_steps agrees, but only shapes the LR and ETA)."""
        if self.cfg.epochs and self.epoch >= self.cfg.epochs:
            return True
        return 0 < self.cfg.max_steps <= self.step

    def fit(self) -> dict[str, Any]:
        """Train to the end, evaluating and checkpointing on schedule (and always at the end, which
        is also the last step of the final epoch); returns the last train and eval records merged.

        Steps are queued back to back; the host reads their numbers (one sync) only at a log, eval or
        checkpoint step, after the first step, and every max_skips steps, so a run of bad steps is
        caught within max_skips steps of its start, and one of max_skips between two reads at the next."""
        cfg = self.cfg
        if self._finished():
            # Only a resumed run can be finished before its first step; its checkpoint may be another run's.
            limit = f"max_steps={cfg.max_steps}" if 0 < cfg.max_steps <= self.step else f"epochs={cfg.epochs}"
            self.log(f"nothing to do: {self.resumed_from} is at step {self.step}, which reaches {limit}")
            return {"step": self.step}
        peak = peak_flops(self.device)
        flops_per_step = self.raw.flops_per_token() * self.tokens_per_step
        stats = self.stats
        last: dict[str, Any] = {}
        unread, window_steps, first_step_s = 0, 0, None
        window_start = time.perf_counter()
        while not self._finished():
            stats.add(self.train_step())
            unread, window_steps = unread + 1, window_steps + 1
            epoch_end = self.prefetcher.epoch > self.epoch
            self.epoch = self.prefetcher.epoch
            done = self._finished()
            log_now = self.step % cfg.log_interval == 0 or done
            eval_now = cfg.eval_batches and ((cfg.eval_interval and self.step % cfg.eval_interval == 0) or done)
            save_now = (cfg.ckpt_interval and self.step % cfg.ckpt_interval == 0) or epoch_end or done
            if not (log_now or eval_now or save_now or first_step_s is None or self.step % cfg.max_skips == 0):
                continue
            window = stats.read(end_window=log_now)
            if first_step_s is None:
                first_step_s = time.perf_counter() - window_start  # compile and warm-up land here; reported once
            check_skips(window, unread, self.step, cfg.max_skips, self.log, lambda: latest_checkpoint(self.run_dir))
            unread, applied = 0, window["applied"]
            if log_now:
                step_s = (time.perf_counter() - window_start) / window_steps
                last = {
                    "step": self.step, "tokens": self.tokens_seen,
                    "loss": window["loss_sum"] / applied if applied else None,
                    "lr": lr_at(self.step - 1, cfg, self.total_steps), "grad_norm": window["grad_norm"],
                    "tokens_per_s": self.tokens_per_step / step_s, "step_s": step_s,
                    "mfu": flops_per_step / step_s / self.dist.world_size / peak if peak else None,
                    "peak_mem_gb": (torch.cuda.max_memory_allocated(self.device) / 1e9
                                    if self.device.type == "cuda" else None),
                    "skipped": stats.skipped, "epoch": self.epoch,
                }
                if window_steps == self.step - self._start_step:
                    last["first_step_s"] = first_step_s
                self.log(progress_line(last, self.total_steps, (self.total_steps - self.step) * step_s))
                if self.metrics:
                    self.metrics.write(last)
                window_steps = 0
            paused = time.perf_counter()
            if eval_now:
                last.update(self._eval_and_log())
            if save_now:
                self.save(epoch_end)
            # Evals and saves stay out of the training speed; a new log window starts after them.
            window_start = time.perf_counter() if log_now else window_start + time.perf_counter() - paused
        return last

    def close(self) -> None:
        """Put back what the Trainer changed in the process; also after a failed construction."""
        torch.set_float32_matmul_precision(self._matmul_precision)
        if self.prefetcher:
            self.prefetcher.close()
        if self.metrics:
            self.metrics.close()

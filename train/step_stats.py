"""Per-step loss, gradient norm and skip flag, summed on the device between host reads, and the
report (and abort) on skipped steps made from each read.

Reading a GPU value on the host waits for the GPU to finish everything queued, and then the GPU
idles while the host queues the next step: on an H200 gpt-45m (12 x 512 then) ran 1.7% faster
without that sync per step (bench/RESULTS.md). So a step's numbers stay on the device, and the
trainer reads them only when it needs them (a log line, an eval, a checkpoint, every max_skips
steps) with one transfer.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

# Slots of the accumulator. LOSS_SUM and APPLIED cover the log window, so its mean loss is summed
# on the device in step order however often the host reads in between (and a resumed run, which
# restores the partial sums, logs the very same float). SKIPPED and LONGEST cover the last read.
LOSS_SUM, APPLIED, SKIPPED, CONSECUTIVE, LONGEST, GRAD_NORM = range(6)


class StepStats:
    def __init__(self, device: torch.device):
        self.acc = torch.zeros(6, device=device)
        self.skipped = 0  # skipped steps of the whole run, as of the last read

    def add(self, step: torch.Tensor) -> None:
        """Fold in one step's [mean loss, grad norm, skipped (0 or 1)], as Trainer.train_step returns."""
        loss, gnorm, skipped = step.unbind()
        self.acc[LOSS_SUM] += torch.where(skipped > 0, torch.zeros_like(loss), loss)  # a skipped step's NaN stays out
        self.acc[APPLIED] += 1 - skipped
        self.acc[SKIPPED] += skipped
        self.acc[CONSECUTIVE] = (self.acc[CONSECUTIVE] + skipped) * skipped
        # The longest run, not just the current one: a run of max_skips may end between two reads.
        self.acc[LONGEST] = torch.maximum(self.acc[LONGEST], self.acc[CONSECUTIVE])
        self.acc[GRAD_NORM] = gnorm

    @staticmethod
    def _window(values: list[float]) -> dict:
        return {"loss_sum": values[LOSS_SUM], "applied": int(values[APPLIED]), "skipped": int(values[SKIPPED]),
                "consecutive": int(values[CONSECUTIVE]), "longest": int(values[LONGEST]),
                "grad_norm": values[GRAD_NORM]}

    def read(self, end_window: bool = True) -> dict:
        """One host sync: loss_sum and applied over the log window, skipped steps and the longest run
        of consecutive ones since the last read (a run still going counts from its start), the
        current run and the last grad norm. `end_window` starts a new log window."""
        window = self._window(self.acc.tolist())
        self.skipped += window["skipped"]
        self.acc[SKIPPED] = 0
        self.acc[LONGEST] = self.acc[CONSECUTIVE]
        if end_window:
            self.acc[LOSS_SUM], self.acc[APPLIED] = 0.0, 0.0
        return window

    def state_dict(self) -> dict:
        """What a resumed run needs to log what this one will: the skip total, the current run of
        skips and the open log window. One host sync, at checkpoints only."""
        values = self.acc.tolist()
        return {"skipped": self.skipped + int(values[SKIPPED]), "consecutive": int(values[CONSECUTIVE]),
                "loss_sum": values[LOSS_SUM], "applied": int(values[APPLIED])}

    def load_state_dict(self, state: dict) -> None:
        self.skipped = int(state["skipped"])
        self.acc.zero_()
        self.acc[LOSS_SUM], self.acc[APPLIED] = float(state["loss_sum"]), float(state["applied"])
        self.acc[CONSECUTIVE] = self.acc[LONGEST] = float(state["consecutive"])


class TrainingAborted(RuntimeError):
    """Training stopped on purpose (too many consecutive non-finite steps)."""


def check_skips(
    window: dict, steps: int, step: int, max_skips: int, log: Callable[[str], None],
    last_checkpoint: Callable[[], Path | None],
) -> None:
    """Log the steps skipped among the last `steps` (window: a StepStats.read()); raise TrainingAborted
    if max_skips steps in a row were skipped anywhere in them."""
    skipped, consecutive, longest = window["skipped"], window["consecutive"], window["longest"]
    if not skipped:
        return
    log(f"step {step}: non-finite loss or gradient norm on some rank; {skipped} of the last {steps} step(s) "
        f"skipped ({consecutive} in a row now, longest run {longest}, max_skips={max_skips})")
    if longest >= max_skips:
        ckpt = last_checkpoint()
        saved = f"The last checkpoint is {ckpt}." if ckpt is not None else "No checkpoint was written yet."
        raise TrainingAborted(
            f"{longest} consecutive steps had a non-finite loss or gradient norm (max_skips={max_skips}); "
            f"stopping at step {step}. {saved} Lower lr, raise warmup_steps or check the data.")

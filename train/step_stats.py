"""Per-step loss, gradient norm and skip flag, summed on the device between host reads, and the
report (and abort) on skipped steps made from each read.

Reading a GPU value on the host waits for the GPU to finish everything queued, and then the GPU
idles while the host queues the next step: on an H200 gpt-45m ran 1.7% faster without that sync
per step (bench/RESULTS.md). So a step's numbers stay on the device, and the trainer reads them only when it
needs them (a log line, an eval, a checkpoint, every max_skips steps) with one transfer.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

# Slots of the accumulator.
LOSS_SUM, APPLIED, SKIPPED, CONSECUTIVE, GRAD_NORM = range(5)


class StepStats:
    def __init__(self, device: torch.device):
        self.acc = torch.zeros(5, device=device)

    def add(self, step: torch.Tensor) -> None:
        """Fold in one step's [mean loss, grad norm, skipped (0 or 1)], as Trainer.train_step returns."""
        loss, gnorm, skipped = step.unbind()
        self.acc[LOSS_SUM] += torch.where(skipped > 0, torch.zeros_like(loss), loss)  # a skipped step's NaN stays out
        self.acc[APPLIED] += 1 - skipped
        self.acc[SKIPPED] += skipped
        self.acc[CONSECUTIVE] = (self.acc[CONSECUTIVE] + skipped) * skipped
        self.acc[GRAD_NORM] = gnorm

    def read(self) -> dict[str, float]:
        """Sums since the last read (loss_sum, applied, skipped), the current run of consecutive skipped
        steps and the last grad norm; one host sync. Resets the sums."""
        values = self.acc.tolist()
        self.acc[:CONSECUTIVE] = 0
        return {"loss_sum": values[LOSS_SUM], "applied": int(values[APPLIED]), "skipped": int(values[SKIPPED]),
                "consecutive": int(values[CONSECUTIVE]), "grad_norm": values[GRAD_NORM]}


class TrainingAborted(RuntimeError):
    """Training stopped on purpose (too many consecutive non-finite steps)."""


def check_skips(
    window: dict, steps: int, step: int, max_skips: int, log: Callable[[str], None],
    last_checkpoint: Callable[[], Path | None],
) -> int:
    """Log the steps skipped among the last `steps` (window: a StepStats.read()) and return how many;
    raise TrainingAborted once max_skips steps in a row were skipped."""
    skipped, consecutive = window["skipped"], window["consecutive"]
    if not skipped:
        return 0
    log(f"step {step}: non-finite loss or gradient norm on some rank; {skipped} of the last {steps} step(s) "
        f"skipped ({consecutive} in a row, max_skips={max_skips})")
    if consecutive >= max_skips:
        raise TrainingAborted(
            f"{consecutive} consecutive steps had a non-finite loss or gradient norm (max_skips={max_skips}); "
            f"stopping at step {step}. The last checkpoint is {last_checkpoint()}. "
            "Lower lr, raise warmup_steps or check the data.")
    return skipped

"""Per-step loss, gradient norm and skip flag, summed on the device between host reads.

Reading a GPU value on the host waits for the GPU to finish everything queued, and then the GPU
idles while the host queues the next step: on an H200 gpt-45m ran 1.7% faster without that sync
per step (bench/RESULTS.md). So a step's numbers stay on the device, and the trainer reads them only when it
needs them (a log line, an eval, a checkpoint, every max_skips steps) with one transfer.
"""

from __future__ import annotations

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

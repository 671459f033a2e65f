"""One rank of the two-process DDP test (test_ddp.py runs it under torchrun, gloo on CPU).

Trains a tiny model with gradient accumulation, records the batches this rank consumed, makes the
loss NaN on rank 1 alone at step 3, and saves what the test compares across ranks. init_batch's
probe runs out of memory above 2 sequences on rank 1 alone (simulated): both ranks must train at 2.
Also what the object collectives hand each rank when every rank offers its own rank number.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from trainer_util import nan_forward, tiny_config

from train import distributed as D
from train.trainer import Trainer


def flat_params(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten().clone() for p in model.parameters()])


def probe_oom_above_2(real_probe):
    def probe(self, micro_batch):
        if micro_batch > 2:
            raise torch.cuda.OutOfMemoryError("simulated CUDA out of memory")
        real_probe(self, micro_batch)
    return probe


def main(store: str, out_dir: str, result_dir: str, optimizer: str) -> None:
    dist = D.init_distributed("cpu")
    if dist.rank == 1:
        Trainer._probe = probe_oom_above_2(Trainer._probe)
    cfg = tiny_config(Path(store), Path(out_dir), max_steps=6, micro_batch=4, grad_accum=2, eval_interval=3,
                      ckpt_interval=3, eval_batches=4, optimizer=optimizer)
    try:
        trainer = Trainer(cfg, dist)
        initial = flat_params(trainer.raw)
        seen, next_batch = [], trainer.prefetcher.next

        def recording_next():
            x, y = next_batch()
            seen.append(x.clone())
            return x, y

        trainer.prefetcher.next = recording_next
        if dist.rank == 1:
            nan_forward(trainer.raw, {9})  # step 3's first micro-batch (grad_accum 4 after init_batch)
        summary = trainer.fit()
        trainer.close()
        torch.save({"initial": initial, "final": flat_params(trainer.raw), "seen": seen,
                    "eval": [x for x, _ in trainer.eval_batches], "val_loss": summary["val_loss"],
                    "skipped": trainer.stats.skipped, "micro_batch": cfg.micro_batch, "grad_accum": cfg.grad_accum,
                    "broadcast": D.broadcast_object(dist.rank), "gathered": D.all_gather_objects(dist.rank)},
                   Path(result_dir) / f"rank{dist.rank}.pt")
    finally:
        D.teardown()


if __name__ == "__main__":
    main(*sys.argv[1:])

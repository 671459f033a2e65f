"""One rank of test_ddp.py's failure test, run as bin/train.py runs (train.run): rank 0's checkpoint write
fails as on a full disk, while rank 1 trains on. The job must stop, not hang."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from trainer_util import tiny_config

from train import run, trainer


def full_disk(*args, **kwargs):
    raise OSError(28, "No space left on device")


def main(store: str, out_dir: str) -> None:
    if os.environ["RANK"] == "0":
        trainer.save_checkpoint = full_disk
    cfg = tiny_config(Path(store), Path(out_dir), max_steps=200, micro_batch=2, ckpt_interval=3, eval_interval=0)
    run.train(cfg)


if __name__ == "__main__":
    main(*sys.argv[1:])

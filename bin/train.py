#!/usr/bin/env python3
"""Train a GPT on a token store: `python bin/train.py --config configs/tiny.yml [key=value ...]`.

Under `torchrun --nproc_per_node=N` every process runs this same script as one DDP rank (NCCL on
GPUs, gloo on CPU). The run directory (out_dir) receives checkpoints, metrics.jsonl, config.yml and
the tokenizer; rerunning the same command continues from the newest complete checkpoint.

`--check` only checks the config, the out_dir and the token store (not what resume would load), for
WORLD_SIZE processes (1 if unset), and exits with the code the run would give (0 if it could start):
`make train NGPU=N` runs it before torchrun, so a typo is reported once.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere, installed or not

from common.config import ConfigError, parse_cli, parse_overrides  # noqa: E402
from pipeline.store import StoreError  # noqa: E402
from train.checkpoint import ResumeRefused  # noqa: E402
from train.config import TrainConfig  # noqa: E402
from train.run import check_config, train  # noqa: E402
from train.trainer import TrainingAborted  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    check_only = "--check" in argv
    argv = [arg for arg in argv if arg != "--check"]
    try:
        cfg = parse_cli(TrainConfig, argv, prog="bin/train.py", description=__doc__)
        cfg.resolve_out_dir(parse_overrides(TrainConfig, argv)[0])
        cfg.validate()
    except ValueError as err:  # ConfigError, and the model config's own checks
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        if check_only:  # what the run would refuse at its start, with the same exit code
            print(check_config(cfg, int(os.environ.get("WORLD_SIZE", "1"))))
            return 0
        train(cfg)
    # OSError: a disk that fills up or goes read-only mid-run (save_checkpoint says which checkpoint and
    # what to do), or a resume path that does not exist.
    except (ConfigError, StoreError, ResumeRefused, TrainingAborted, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if os.environ.get("RANK", "0") == "0":  # one line for the run, not one per rank
            print(f"interrupted: rerun the same command to continue from the newest checkpoint in {cfg.out_dir} "
                  "(if there is none yet, it starts over)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    # Progress goes to stdout, errors and the Ctrl-C line to stderr. Block-buffered on a pipe (`| tee`,
    # a job log), stdout held the last progress lines back until exit, after those messages.
    sys.stdout.reconfigure(line_buffering=True)
    raise SystemExit(main())

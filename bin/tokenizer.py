#!/usr/bin/env python
"""Train data_cache/<name>/tokenizer.json (`make tokenizer`); `--help` lists every option."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere, installed or not

from pipeline.tokenizer_step import tokenizer_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(tokenizer_main())

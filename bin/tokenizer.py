#!/usr/bin/env python
"""Train data_cache/<name>/tokenizer.json (`make tokenizer`); `--help` lists every option."""

import sys

from pipeline.tokenizer_step import tokenizer_main

if __name__ == "__main__":
    sys.exit(tokenizer_main())

#!/usr/bin/env python
"""Build the token store data_cache/<name>/ (`make prepare`); `--help` lists every option."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere, installed or not

from pipeline.prepare import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())

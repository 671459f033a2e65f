#!/usr/bin/env python
"""Build the token store data_cache/<name>/ (`make prepare`); `--help` lists every option."""

import sys

from pipeline.prepare import main

if __name__ == "__main__":
    sys.exit(main())

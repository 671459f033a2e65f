"""Launch settings for the elementwise kernels, chosen by timing on the GPU at their first call.

Only kernels whose every output element is computed the same way under any setting are tuned this
way (tiling changes which program computes an element, not how), so the timing-based choice never
changes a result. Triton's interpreter has nothing to time: it gets the first setting.
"""

from __future__ import annotations

import os

import triton


def candidates(configs: list[triton.Config]) -> list[triton.Config]:
    # The variable, not triton.knobs: Triton before 3.4 (torch 2.4-2.7) has no knobs module.
    interpreted = os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")
    return configs[:1] if interpreted else configs

"""The Triton kernels build for real GPUs (tests/model/sm_compile.py), checked on a machine without one.

The interpreter that runs the other kernel tests on CPU accepts code the compiler refuses (a loop
variable whose type changes, for one); this catches that before a GPU session finds it.
"""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _nvidia_backend() -> bool:
    if importlib.util.find_spec("triton") is None:
        return False
    spec = importlib.util.find_spec("triton.backends.nvidia")
    return spec is not None and any(Path(p, "bin", "ptxas").exists() for p in spec.submodule_search_locations)


@pytest.mark.slow
@pytest.mark.skipif(not _nvidia_backend(), reason="needs Triton with its NVIDIA backend and ptxas")
def test_every_kernel_the_presets_launch_compiles_for_h100_a100_and_t4(tmp_path):
    # A cache of its own: a test leaves nothing in ~/.triton/cache.
    proc = subprocess.run([sys.executable, str(REPO / "tests/model/sm_compile.py")], cwd=REPO,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "TRITON_CACHE_DIR": str(tmp_path)},
                          capture_output=True, text=True, timeout=500)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "kernel builds compiled for sm_90, sm_80, sm_75" in proc.stdout, proc.stdout

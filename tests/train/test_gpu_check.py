"""bench/gpu_check.py --smoke: the GPU check's whole path (store, CLI overrides, metrics parsing,
summary) on CPU, so the one run on a lent GPU cannot fail on a typo."""

from __future__ import annotations

import json
import os
import subprocess

from trainer_util import REPO


def test_gpu_check_smoke(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path / "out"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", str(REPO / "bench/gpu_check.sh"), "--smoke", "--runs", "eager", "--work-dir",
                           str(tmp_path / "work")], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "== gpu check on cpu" in proc.stdout
    summary = json.loads((tmp_path / "out/gpu_check.json").read_text())
    eager = summary["eager"]
    assert eager["exit_code"] == 0 and eager["steps"] == 6 and eager["tokens_per_s"] > 0
    assert eager["init_s"] is not None and eager["first_step_s"] is not None and eager["val_loss"] is not None
    assert (tmp_path / "out/train_eager.log").read_text().count("step 6/6") == 1

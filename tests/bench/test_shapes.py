"""bench/shapes.py --smoke: the shape comparison's whole path on CPU (base, each candidate at equal
tokens, then at the equal GPU time its measured step time gives), so the run on a lent GPU cannot
fail on a typo."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_shapes_smoke(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path / "out"), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, str(REPO / "bench/shapes.py"), "--smoke", "--steps", "24",
                           "--candidates", "wide128", "--work-dir", str(tmp_path / "work")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = json.loads((tmp_path / "out/shapes.json").read_text())
    assert list(results) == ["base", "wide128", "wide128-time"]
    base, same_tokens, same_time = results["base"], results["wide128"], results["wide128-time"]
    assert base["steps"] == same_tokens["steps"] == 24 and base["params"] != same_tokens["params"]
    # The equal-time run's length comes from the two step times just measured.
    assert same_time["steps"] == same_time["planned_steps"] == round(24 * base["step_s"] / same_tokens["step_s"])
    # Four evaluations, the last at the final step (an equal-time run of another length too): its val loss.
    for r in results.values():
        assert len(r["curve"]) == 4 and r["curve"][-1][1] == r["val_loss"]
    assert "wide128-time" in proc.stdout and "vs base" in proc.stdout
    # A candidate's two runs share one compile cache; base has its own.
    commands = [line for line in proc.stdout.splitlines() if line.startswith("$ ")]
    assert len(commands) == 3 and "wide128-caches" in commands[1] and "wide128-caches" in commands[2]
    assert "base-caches" in commands[0]

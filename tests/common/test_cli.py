import argparse

import pytest
import torch

from common.cli import number, path_arg, resolve_device


def _error(parser: argparse.ArgumentParser, argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        parser.parse_args(argv)
    assert exc.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_number_errors_name_the_option_and_what_it_expects(capsys):
    """A closure as `type=` made argparse say `argument --max-new-tokens: invalid parse value: 'abc'`."""
    p = argparse.ArgumentParser(prog="x")
    p.add_argument("--n", type=number(int, 0))
    p.add_argument("--t", type=number(float, 0))
    p.add_argument("--p", type=number(float, 0, above=True, high=1))
    assert p.parse_args(["--n", "3", "--t", "0", "--p", "1"]) == argparse.Namespace(n=3, t=0.0, p=1.0)
    assert _error(p, ["--n", "abc"], capsys) == "x: error: argument --n: expected an integer >= 0, got 'abc'"
    assert _error(p, ["--n", "-1"], capsys) == "x: error: argument --n: expected an integer >= 0, got '-1'"
    assert _error(p, ["--t", "x"], capsys) == "x: error: argument --t: expected a number >= 0, got 'x'"
    assert _error(p, ["--t", "nan"], capsys) == "x: error: argument --t: expected a number >= 0, got 'nan'"
    assert _error(p, ["--p", "0"], capsys) == "x: error: argument --p: expected a number > 0 and <= 1, got '0'"


def test_path_arg_refuses_only_the_empty_path(capsys):
    """`--data "$STORE"` with STORE unset: eval took it as no --data (the training store), export as the
    current folder."""
    p = argparse.ArgumentParser(prog="x")
    p.add_argument("--data", type=path_arg)
    assert p.parse_args(["--data", "a b/c"]).data == "a b/c" and p.parse_args([]).data is None
    assert _error(p, ["--data", ""], capsys) == "x: error: argument --data: an empty path; name the file or folder"


@pytest.mark.parametrize("spec, message", [
    ("tpu", "--device tpu: not a device name (cpu, cuda, cuda:1, mps, ...)"),  # torch's RuntimeError traceback
    ("meta", "--device meta: holds no data; use cpu or a GPU"),
])
def test_a_device_torch_cannot_use_is_a_value_error(spec, message):
    with pytest.raises(ValueError) as err:
        resolve_device(spec)
    assert str(err.value) == message
    assert resolve_device("cpu") == "cpu" and resolve_device("auto") in ("cpu", "cuda")


def test_an_upper_bound_alone_reads_without_a_dangling_and(capsys):
    p = argparse.ArgumentParser(prog="x")
    p.add_argument("--k", type=number(int, high=5))
    assert p.parse_args(["--k", "-9"]).k == -9
    assert _error(p, ["--k", "6"], capsys) == "x: error: argument --k: expected an integer <= 5, got '6'"


def test_auto_and_cuda_follow_what_torch_sees(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu"
    # Said before any allocation is tried, whose error would come from deep in torch's CUDA init.
    with pytest.raises(ValueError, match=r"^--device cuda:1: this torch sees no CUDA device$"):
        resolve_device("cuda:1")
    # A valid name of a backend this build lacks: only allocating on it tells.
    with pytest.raises(ValueError, match=r"^--device xla: not usable by this torch \(.*XLA"):
        resolve_device("xla")

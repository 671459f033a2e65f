"""Every bench/ script refuses a bad number, preset or config file at once, in argparse's one line:
before, --reps 0 ended train.py in statistics.median after every model had been timed, prepare.py's
--repeat 0 in an UnboundLocalError after cleaning the corpus, and gpu_check.py's --steps 0 silently
became the default."""

from __future__ import annotations

import sys

import pytest

CASES = [
    ("train", ["--reps", "0"], "argument --reps: expected an integer >= 1, got '0'"),
    ("train", ["--vocab", "70000"], "argument --vocab: expected an integer >= 7 and <= 65536, got '70000'"),
    ("train", ["--config", "{tmp}/none.yml"], "--config {tmp}/none.yml: no model section to read (FileNotFoundError"),
    ("loss", ["--reps", "0"], "argument --reps: expected an integer >= 1, got '0'"),
    ("loss", ["--chunk-mib", "64", "0"], "argument --chunk-mib: expected an integer >= 1, got '0'"),
    ("sample", ["--new-tokens", "0"], "argument --new-tokens: expected an integer >= 1, got '0'"),
    ("sample", ["--reps", "0"], "argument --reps: expected an integer >= 1, got '0'"),
    ("sample", ["--presets", "tiny", "nosuch"], "--presets: no "),
    ("prepare", ["--repeat", "0"], "argument --repeat: expected an integer >= 1, got '0'"),
    ("prepare", ["--workers", "0"], "argument --workers: expected an integer >= 1, got '0'"),
    ("prepare", ["--presets", "bogus"], "argument --presets: invalid choice: 'bogus'"),
    ("kernels", ["--reps", "0"], "argument --reps: expected an integer >= 1, got '0'"),
    ("gpu_check", ["--steps", "0"], "argument --steps: expected an integer >= 1, got '0'"),
    ("gpu_check", ["--micro-batch", "0"], "argument --micro-batch: expected an integer >= 1, got '0'"),
    ("gpu_profile", ["--steps", "0"], "argument --steps: expected an integer >= 1, got '0'"),
    ("shapes", ["--steps", "3"], "argument --steps: expected an integer >= 4, got '3'"),
    ("shapes", ["--candidates", "wide128,huge"], "--candidates takes "),
    ("shapes", [], "--store is required"),
    ("optim", ["--steps", "0"], "argument --steps: expected an integer >= 1, got '0'"),
    ("optim", ["--evals", "0"], "argument --evals: expected an integer >= 1, got '0'"),
    ("optim", ["--eval-batches", "0"], "argument --eval-batches: expected an integer >= 1, got '0'"),
    ("optim", ["--runs", "sgd+cosine"], "argument --runs: expected OPTIMIZER+SCHEDULE with OPTIMIZER one of "
                                        "adamw, muon and SCHEDULE one of cosine, wsd, constant, got 'sgd+cosine'"),
    ("optim", ["--runs", "muon+wsd", "muon+wsd"], "--runs: a pair is named twice"),
    ("optim", ["--config", "{tmp}/none.yml"], "--config {tmp}/none.yml: config file not found"),
]


# Each script's first costly step (corpus, store, model, timings): reaching it fails the test at once.
FIRST_WORK = {"train": "synthetic_store", "loss": "interleaved", "sample": "GPT", "prepare": "make_corpus",
              "optim": "build_store", "shapes": "synthetic_store"}


def _work_started(*args, **kwargs):
    raise AssertionError("the script started its work before refusing the argument")


@pytest.mark.parametrize(("name", "argv", "message"), CASES, ids=[f"{n} {' '.join(a)}" for n, a, _ in CASES])
def test_a_bad_argument_is_one_line_before_any_work(bench_script, tmp_path, monkeypatch, capsys, name, argv, message):
    script = bench_script(name)
    argv, message = [a.replace("{tmp}", str(tmp_path)) for a in argv], message.replace("{tmp}", str(tmp_path))
    if name in FIRST_WORK:
        monkeypatch.setattr(script, FIRST_WORK[name], _work_started)
    monkeypatch.setattr(sys, "argv", [f"{name}.py", *argv])
    monkeypatch.setenv("OUT", str(tmp_path / "out"))
    with pytest.raises(SystemExit) as stop:
        script.main(argv) if name in ("kernels", "gpu_check", "gpu_profile", "shapes") else script.main()
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"{name}.py: error: ") and message in err[-1], err
    assert not list(tmp_path.iterdir())  # nothing built, nothing written

"""bin/demo.py: the step order, and skipping steps whose outputs exist (the scripts are not run here)."""

from __future__ import annotations

import subprocess

import pytest
from script_loader import load_script

demo = load_script("demo")


def test_demo_runs_missing_steps_and_skips_done_ones(tmp_path, monkeypatch, capsys):
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "tiny.yml").write_text("data: data_cache/shakespeare\nmax_steps: 5\n")
    monkeypatch.chdir(tmp_path)  # also restores the working directory that demo.main changes
    monkeypatch.setattr(demo, "ROOT", tmp_path)
    ran: list[str] = []
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: ran.append(cmd[1].rsplit("/", 1)[1]))

    assert demo.main([]) == 0
    assert ran == ["tokenizer.py", "prepare.py", "train.py", "sample.py", "eval.py"]

    store = tmp_path / "data_cache" / "shakespeare"
    store.mkdir(parents=True)
    (store / "tokenizer.json").write_text("{}")
    (store / "manifest.json").write_text("{}")
    ckpt = tmp_path / "runs" / "tiny" / "ckpt-00000005"
    ckpt.mkdir(parents=True)
    (ckpt / "COMPLETE").write_text('{"step": 5}')
    ran.clear()
    capsys.readouterr()
    assert demo.main([]) == 0
    assert ran == ["sample.py", "eval.py"]
    assert capsys.readouterr().out.count("skipped") == 3


def test_demo_reports_a_failed_step(tmp_path, monkeypatch, capsys):
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "tiny.yml").write_text("data: data_cache/shakespeare\nmax_steps: 5\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(demo, "ROOT", tmp_path)

    def fail(cmd, **kw):
        raise subprocess.CalledProcessError(3, cmd)

    monkeypatch.setattr(subprocess, "run", fail)
    assert demo.main([]) == 1
    assert "bin/tokenizer.py" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--max-new-tokens", "abc"], "argument --max-new-tokens: expected an integer >= 0, got 'abc'"),
    (["--eval-tokens", "-1"], "argument --eval-tokens: expected an integer >= 1, got '-1'"),
    (["--seed", "x"], "argument --seed: expected an integer >= 0"),
])
def test_bad_sample_and_eval_options_stop_the_demo_before_any_step(monkeypatch, capsys, argv, message):
    """They were passed on as text, so bin/sample.py refused them only after minutes of training."""
    ran: list[str] = []
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: ran.append(cmd))
    with pytest.raises(SystemExit) as exc:
        demo.main(argv)
    assert exc.value.code == 2 and message in capsys.readouterr().err and ran == []


def demo_in(tmp_path, monkeypatch, config: str, failing: str = "") -> list[str]:
    """A repository at tmp_path with configs/tiny.yml, run from outside it; returns the list the
    scripts the steps run are recorded in. Like subprocess.run, the fake raises for the failing
    script only when asked to check its exit code."""
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "tiny.yml").write_text(config)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # `python bin/demo.py` from another folder
    monkeypatch.setattr(demo, "ROOT", tmp_path)
    ran: list[str] = []

    def run(cmd, check=False, **kw):
        ran.append(cmd[1].rsplit("/", 1)[1])
        code = 1 if ran[-1] == failing else 0
        if check and code:
            raise subprocess.CalledProcessError(code, cmd)
        return subprocess.CompletedProcess(cmd, code)

    monkeypatch.setattr(subprocess, "run", run)
    return ran


def done(tmp_path, *files: str) -> None:
    """Outputs earlier steps left: store files, or a complete checkpoint (ckpt-...) of runs/tiny."""
    store, run = tmp_path / "data_cache" / "shakespeare", tmp_path / "runs" / "tiny"
    for name in files:
        if name.startswith("ckpt-"):
            (run / name).mkdir(parents=True)
            (run / name / "COMPLETE").write_text(f'{{"step": {int(name[5:13])}}}')
        else:
            store.mkdir(parents=True, exist_ok=True)
            (store / name).write_text("{}")


STEPS = ["tokenizer.py", "prepare.py", "train.py", "sample.py", "eval.py"]


@pytest.mark.parametrize("config, outputs, expected", [
    # A tokenizer alone is not a store: prepare still runs.
    ("max_steps: 5", ["tokenizer.json"], STEPS[1:]),
    # The epoch-end checkpoint that closes training is recognised by its step.
    ("max_steps: 5", ["tokenizer.json", "manifest.json", "ckpt-00000005_e1"], STEPS[3:]),
    # Trained by epochs (max_steps 0): a checkpoint at any step is no sign that training is done.
    ("max_steps: 0\nepochs: 1\nsampler_mode: epoch", ["tokenizer.json", "manifest.json", "ckpt-00000005"],
     STEPS[2:]),
])
def test_demo_skips_only_the_steps_whose_output_exists(tmp_path, monkeypatch, config, outputs, expected):
    ran = demo_in(tmp_path, monkeypatch, f"data: data_cache/shakespeare\n{config}\n")
    done(tmp_path, *outputs)
    assert demo.main([]) == 0
    assert ran == expected


def test_demo_stops_at_a_step_that_exits_non_zero(tmp_path, monkeypatch, capsys):
    """Training that failed went on to sample and eval a model that was never trained."""
    ran = demo_in(tmp_path, monkeypatch, "data: data_cache/shakespeare\nmax_steps: 5\n", failing="train.py")
    assert demo.main([]) == 1
    assert ran == STEPS[:3] and "bin/train.py" in capsys.readouterr().err


def test_demo_refuses_a_config_whose_store_it_would_not_build(tmp_path, monkeypatch, capsys):
    """The demo prepares data_cache/<name>; training on another store would fail after the first steps."""
    ran = demo_in(tmp_path, monkeypatch, "data: /data/web\nmax_steps: 5\n")
    assert demo.main([]) == 2
    assert ran == [] and "the demo builds data_cache/<name>; configs/tiny.yml trains on /data/web" in \
        capsys.readouterr().err

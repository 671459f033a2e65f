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

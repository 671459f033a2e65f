"""bin/export.py and train/export.py: safetensors round trip with identical logits; untrusted input."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import shutil

import pytest
import torch
from bin_util import make_run
from safetensors import safe_open
from safetensors.torch import save_model
from script_loader import load_script

from common.files import sha256_file
from model import GPT, GPTConfig
from train.checkpoint import save_checkpoint
from train.export import TokenizerMismatch, export, load

export_cli = load_script("export")


@pytest.mark.parametrize("model_kw", [{}, {"tie_embeddings": False, "pos_encoding": "learned", "bias": True,
                                           "norm": "layernorm", "mlp": "swiglu", "qk_norm": True}])
def test_round_trip_gives_identical_logits(tmp_path, tokenizer_path, store_dir, model_kw, capsys):
    run = make_run(tmp_path / "run", tokenizer_path, store_dir, seed=4, **model_kw)
    assert export_cli.main(["--checkpoint", str(run), "--out", str(tmp_path / "out")]) == 0
    assert "exported" in capsys.readouterr().out
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json"]
    original, exported = load(run), load(out)
    assert GPTConfig(**json.loads((out / "config.json").read_text())) == original.model.cfg
    idx = torch.randint(6, original.model.cfg.vocab_size, (2, 20))
    with torch.no_grad():
        assert torch.equal(original.model(idx, all_logits=True)[0], exported.model(idx, all_logits=True)[0])
    if original.model.cfg.tie_embeddings:  # stored once, and tied again after loading
        assert exported.model.lm_head.weight is exported.model.wte.weight
    with safe_open(out / "model.safetensors", framework="pt") as f:
        meta, names = f.metadata(), set(f.keys())
    tied = {"lm_head.weight", "wte.weight"} if original.model.cfg.tie_embeddings else set()
    assert len(names) == len(original.model.state_dict()) - len(tied) // 2
    assert meta["tokenizer_sha256"] == sha256_file(tokenizer_path) and meta["step"] == "7"
    assert (exported.step, exported.tokenizer_sha256) == (7, original.tokenizer_sha256)


def test_sample_from_an_export_matches_the_checkpoint(run_dir, tmp_path, monkeypatch, capsys):
    export(load(run_dir), tmp_path / "out")
    sample = load_script("sample")
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    outs = []
    for src in (run_dir, tmp_path / "out"):
        assert sample.main(["--checkpoint", str(src), "--prompt", "ROMEO:", "--temperature", "0",
                            "--max-new-tokens", "15", "--device", "cpu"]) == 0
        outs.append(capsys.readouterr().out)
    assert outs[0] == outs[1]


def test_export_with_a_changed_tokenizer_is_refused(run_dir, tmp_path):
    out = export(load(run_dir), tmp_path / "out")
    with open(out / "tokenizer.json", "a") as f:
        f.write("\n")
    with pytest.raises(TokenizerMismatch, match="sha256"):
        load(out)


class Payload:
    """Unpickling this runs code; weights_only loading must refuse it."""

    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_checkpoint_with_pickled_objects_is_refused(run_dir, tmp_path, capsys):
    run = tmp_path / "evil"
    shutil.copytree(run_dir, run)
    state = torch.load(next(run.glob("ckpt-*")) / "state.pt", weights_only=True)
    state["extra"] = Payload()
    save_checkpoint(run, "00000008", state)
    assert export_cli.main(["--checkpoint", str(run), "--out", str(tmp_path / "out")]) == 1
    assert "refused" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_bad_export_config_is_an_error(run_dir, tmp_path):
    out = export(load(run_dir), tmp_path / "out")
    (out / "config.json").write_text(json.dumps({"n_layer": 2, "evil": 1}))
    with pytest.raises(ValueError, match="not a model config"):
        load(out)
    # Checked as a YAML config is, naming the file: a float size loaded and failed later (in generate, or
    # as a TypeError traceback in GPT()), and GPTConfig's own checks named no file; bytes not UTF-8 neither.
    good, named = dataclasses.asdict(load(run_dir).model.cfg), re.escape(f"{out / 'config.json'}: not a model config: ")
    for bad, message in (({"block_size": 8.0}, "block_size: expected int, got 8.0"),
                         ({"d_model": 33.5}, "d_model: expected int"),
                         ({"n_head": 5}, "not divisible by n_head=5")):
        (out / "config.json").write_text(json.dumps({**good, **bad}))
        with pytest.raises(ValueError, match=f"^{named}.*{message}"):
            load(out)
    (out / "config.json").write_bytes(b"\xff{}")
    with pytest.raises(ValueError, match=f"^{named}.*utf-8"):
        load(out)


def test_weights_that_do_not_fit_the_config_are_an_error(tmp_path, tokenizer_path):
    """An export folder whose weights belong to another shape fails loudly, not silently."""
    model = GPT(GPTConfig(vocab_size=300, block_size=8, n_layer=1, n_head=1, d_model=8))
    folder = tmp_path / "f"
    folder.mkdir()
    save_model(model, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"vocab_size": 300, "block_size": 8, "n_layer": 2, "n_head": 1,
                                                    "d_model": 8}))
    shutil.copyfile(tokenizer_path, folder / "tokenizer.json")
    with pytest.raises(ValueError, match="do not fit"):
        load(folder)


def _broken_checkpoint(run_dir, tmp_path, how: str):
    run = tmp_path / "broken"
    shutil.copytree(run_dir, run)
    path = next(run.glob("ckpt-*")) / "state.pt"
    if how == "truncated":  # the COMPLETE marker stays: the file was damaged after saving
        path.write_bytes(path.read_bytes()[:1000])
    elif how == "tensor":
        torch.save(torch.zeros(3), path)
    else:
        state = torch.load(path, weights_only=True)
        state["model_config"]["field_from_the_future"] = 1
        torch.save(state, path)
    return run


@pytest.mark.parametrize("how, message", [("truncated", "not a readable checkpoint"),
                                          ("tensor", "holds no model state dict"),
                                          ("unknown_field", "field_from_the_future")])
def test_damaged_checkpoint_is_a_one_line_error(run_dir, tmp_path, capsys, how, message):
    run = _broken_checkpoint(run_dir, tmp_path, how)
    assert export_cli.main(["--checkpoint", str(run), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {next(run.glob('ckpt-*'))}: ") and message in err and len(err.splitlines()) == 1


def test_corrupt_safetensors_is_a_one_line_error(run_dir, tmp_path, capsys):
    out = export(load(run_dir), tmp_path / "out")
    (out / "model.safetensors").write_bytes(b"\xff" * 64)
    assert export_cli.main(["--checkpoint", str(out), "--out", str(tmp_path / "again")]) == 1
    assert capsys.readouterr().err.startswith(f"error: {out / 'model.safetensors'}: not a readable safetensors")


def test_reexport_into_its_own_folder(run_dir, tmp_path, capsys):
    out = export(load(run_dir), tmp_path / "out")
    before = load(out).model.state_dict()
    assert export_cli.main(["--checkpoint", str(out), "--out", str(out)]) == 0
    after = load(out).model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_a_crash_while_an_export_is_replaced_leaves_no_export_rather_than_a_mix(run_dir, tmp_path, monkeypatch):
    """The three files were overwritten one after the other: stopped after the new config.json, the
    folder held it beside the old weights, which load as another model wherever the shapes agree."""
    out = export(load(run_dir), tmp_path / "out")

    def stopped(cfg):  # the config is made once the weights are written: the crash comes between them
        raise KeyboardInterrupt

    monkeypatch.setattr(dataclasses, "asdict", stopped)
    with pytest.raises(KeyboardInterrupt):
        export(load(run_dir), out)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "tokenizer.json"]  # no weights, no temp file
    with pytest.raises((ValueError, FileNotFoundError)):
        load(out)
    monkeypatch.undo()
    (out / ".model.safetensors.tmp99999").write_bytes(b"weights of an export killed with -9")
    assert load(export(load(run_dir), out)).step == load(run_dir).step  # a rerun puts it right
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json"]


def test_bad_out_and_tokenizer_paths_are_one_line_errors(run_dir, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert export_cli.main(["--checkpoint", str(run_dir), "--out", str(tmp_path / "file")]) == 1
    assert f"{tmp_path / 'file'}: exists and is not a folder" in capsys.readouterr().err
    assert export_cli.main(["--checkpoint", str(run_dir), "--out", str(tmp_path / "o"), "--tokenizer",
                            str(tmp_path)]) == 1
    assert f"error: tokenizer {tmp_path}: cannot read it" in capsys.readouterr().err


def test_an_export_into_a_token_store_or_a_run_directory_is_refused(run_dir, store_dir, tmp_path, capsys):
    """Into a store, the export's tokenizer.json replaced the store's own (the store then no longer
    opened); into a run directory, the folder loaded as the export from then on, hiding every newer
    checkpoint of the run."""
    store = tmp_path / "store"
    shutil.copytree(store_dir, store)
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    started = tmp_path / "started"  # a run before its first checkpoint: later ones would be hidden too
    started.mkdir()
    (started / "metrics.jsonl").write_text("")
    ckpt = next(run.glob("ckpt-*"))  # pruned with its checkpoint, the export would go too
    folders = (store, run, started, ckpt)
    before = {p: p.read_bytes() for folder in folders for p in folder.rglob("*") if p.is_file()}
    for folder, held in ((store, "a token store (manifest.json"), (run, "a training run's files"),
                         (started, "a training run's files"), (ckpt, "a training run's files"),
                         (tmp_path, "token stores in its folders")):
        assert export_cli.main(["--checkpoint", str(run_dir), "--out", str(folder)]) == 1
        assert f"error: cannot export: {folder}: holds {held}" in capsys.readouterr().err
    assert {p: p.read_bytes() for folder in folders for p in folder.rglob("*") if p.is_file()} == before


def test_an_export_remembers_its_store_and_is_readable_by_others(run_dir, tmp_path, monkeypatch, capsys):
    """bin/eval.py on an export needed --data, although the README says it defaults to the training
    store; and the weights file was written 0600 while its neighbours were 0644."""
    old_umask = os.umask(0o022)
    try:
        out = export(load(run_dir), tmp_path / "out")
    finally:
        os.umask(old_umask)
    assert (out / "model.safetensors").stat().st_mode & 0o777 == 0o644
    monkeypatch.chdir(tmp_path)  # the recorded path is absolute
    ev = load_script("eval")
    results = []
    for src in (run_dir, out):
        assert ev.main(["--checkpoint", str(src), "--max-tokens", "40", "--device", "cpu", "--json"]) == 0
        results.append(json.loads(capsys.readouterr().out))
    assert results[0]["loss"] == results[1]["loss"]


def test_load_gives_eval_mode_and_an_export_takes_the_tokenizer_override(run_dir, tmp_path):
    """load() returns the model in eval mode (dropout off), from a checkpoint and from an export; an export
    loaded with --tokenizer uses and verifies that file, not its own; its metadata names the source
    checkpoint. Mutations leaving the model in training mode, ignoring the override for exports, or
    dropping the source from the metadata passed every test."""
    loaded = load(run_dir)
    assert not loaded.model.training
    out = export(loaded, tmp_path / "exp")
    with safe_open(out / "model.safetensors", framework="pt") as f:
        assert f.metadata()["source"] == str(loaded.source)
    assert not load(out).model.training
    copy = shutil.copyfile(out / "tokenizer.json", tmp_path / "copy.json")
    assert load(out, tokenizer=copy).tokenizer_path == copy
    wrong = tmp_path / "wrong.json"
    wrong.write_bytes(copy.read_bytes() + b"\n")
    with pytest.raises(TokenizerMismatch):
        load(out, tokenizer=wrong)


def test_an_empty_out_is_refused_rather_than_exporting_into_the_current_directory(run_dir, tmp_path, monkeypatch,
                                                                                   capsys):
    """`--out "$DIR"` with DIR unset: the export landed in whatever folder the command ran in."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        export_cli.main(["--checkpoint", str(run_dir), "--out", ""])
    assert exit_.value.code == 2
    assert "argument --out: an empty path" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []

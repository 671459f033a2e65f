"""Resuming elsewhere than where a run left off: what is refused (another tokenizer, store, model, data
stream or world size; a branch that would mix two histories in one out_dir) and what goes on (a world-size
change when allowed, a rerun of a branch's own command)."""

from __future__ import annotations

import json
import shutil

import pytest
from trainer_util import make_store, make_trainer

from common.config import from_dict, to_dict
from train.checkpoint import ResumeRefused, list_checkpoints, load_checkpoint, save_checkpoint
from train.config import TrainConfig
from train.metrics import read_metrics


def test_resume_refusals_and_world_size_change(trained, tmp_path):
    _, cfg, run_dir, _, _ = trained
    out = tmp_path / "run"
    # A copy of the trained run's newest checkpoint, to tamper with.
    save_checkpoint(out, "00000030", load_checkpoint(run_dir))
    base = to_dict(cfg) | {"out_dir": str(out), "max_steps": 32}

    def attempt(**changes):
        return make_trainer(from_dict(TrainConfig, base | changes))

    make_store(tmp_path / "other_tok", tokenizer=b'{"other": 1}')
    with pytest.raises(ResumeRefused, match="tokenizer sha256"):
        attempt(data=str(tmp_path / "other_tok"))
    make_store(tmp_path / "other_data", seed=1)
    with pytest.raises(ResumeRefused, match="another token store"):
        attempt(data=str(tmp_path / "other_data"))
    with pytest.raises(ResumeRefused, match=r"model.n_layer: 2 -> 3"):
        attempt(model=to_dict(cfg.model) | {"n_layer": 3})
    with pytest.raises(ResumeRefused, match="already holds checkpoints"):
        attempt(resume="none")
    with pytest.raises(FileNotFoundError, match="nowhere: does not exist"):
        attempt(resume=str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        attempt(resume=str(tmp_path / "empty"))
    # The data position belongs to one stream: seed, sampler_mode and align_bos must stay.
    for change, message in ((dict(seed=1), "seed: 1337 -> 1"), (dict(sampler_mode="epoch"), "sampler_mode: 'random'"),
                            (dict(align_bos=True), "align_bos: False -> True")):
        with pytest.raises(ResumeRefused, match=f"data stream was drawn with other settings \\({message}"):
            attempt(**change)
    state = load_checkpoint(out)
    state["sampler"][0]["block_size"] = 16  # malformed: the model's block_size is 32
    save_checkpoint(tmp_path / "odd", "00000030", state)
    with pytest.raises(ResumeRefused, match="data position does not fit this run's sampler"):
        attempt(out_dir=str(tmp_path / "odd"))

    # How the model is computed may change: a checkpoint from before the kernel switches existed resumes.
    state = load_checkpoint(out)
    for key in ("fused_loss", "fused_swiglu", "fused_rope"):
        del state["model_config"][key]
    state["model_config"]["bf16_residual"] = not cfg.model.bf16_residual
    save_checkpoint(out, "00000030", state)
    attempt().close()

    state = load_checkpoint(out)
    state.update(world_size=2, sampler=state["sampler"] * 2, rng=state["rng"] * 2)
    save_checkpoint(out, "00000030", state)
    with pytest.raises(ResumeRefused, match="written by 2 process"):
        attempt()
    trainer = attempt(allow_world_size_change=True)
    assert trainer.step == 30
    assert trainer.fit()["step"] == 32
    trainer.close()


def test_branching_from_an_older_checkpoint_in_the_same_run_dir_is_refused(trained, tmp_path):
    _, cfg, run_dir, _, _ = trained
    out = tmp_path / "run"
    for name in ("ckpt-00000010", "ckpt-00000020", "ckpt-00000030"):
        shutil.copytree(run_dir / name, out / name)
    base = to_dict(cfg) | {"out_dir": str(out), "max_steps": 32}
    with pytest.raises(ResumeRefused, match=r"past step 10 .*\(ckpt-00000020, ckpt-00000030\).*another out_dir"):
        make_trainer(from_dict(TrainConfig, base | {"resume": str(out / "ckpt-00000010")}))
    assert [p.name for p in list_checkpoints(out)] == ["ckpt-00000010", "ckpt-00000020", "ckpt-00000030"]
    # The newest one continues in place, and an older one in another run dir.
    make_trainer(from_dict(TrainConfig, base | {"resume": str(out / "ckpt-00000030")})).close()
    branch = base | {"resume": str(out / "ckpt-00000010"), "out_dir": str(tmp_path / "branch")}
    assert make_trainer(from_dict(TrainConfig, branch)).step == 10


def test_rerunning_a_branch_command_continues_the_branch(trained, tmp_path):
    """A branch (resume=<another run's checkpoint>) that stopped was refused on a rerun of its command, as
    if its own checkpoints were another run's; the interrupted message says to rerun the command."""
    _, cfg, run_dir, _, _ = trained
    shutil.copytree(run_dir / "ckpt-00000010", tmp_path / "src" / "ckpt-00000010")
    base = to_dict(cfg) | {"resume": str(tmp_path / "src" / "ckpt-00000010"), "out_dir": str(tmp_path / "branch"),
                           "eval_interval": 0, "ckpt_interval": 0}
    for max_steps in (12, 14):
        trainer = make_trainer(from_dict(TrainConfig, base | {"max_steps": max_steps}))
        assert trainer.fit()["step"] == max_steps
        trainer.close()
    assert trainer.resumed_from == tmp_path / "branch" / "ckpt-00000012"
    shutil.rmtree(tmp_path / "src")  # the source may be pruned meanwhile: the branch goes on from its own
    trainer = make_trainer(from_dict(TrainConfig, base | {"max_steps": 15}))
    assert trainer.resumed_from == tmp_path / "branch" / "ckpt-00000014" and trainer.fit()["step"] == 15
    trainer.close()
    assert [r["step"] for r in read_metrics(tmp_path / "branch" / "metrics.jsonl") if "loss" in r] == [11, 12, 13, 14,
                                                                                                        15]
    # Another source into that folder is still refused.
    with pytest.raises(ResumeRefused, match="holds checkpoints of another history"):
        make_trainer(from_dict(TrainConfig, base | {"resume": str(run_dir / "ckpt-00000020"), "max_steps": 22}))


def test_a_branch_into_a_folder_of_another_run_is_refused_and_keeps_none_of_its_metrics(trained, tmp_path):
    """Only checkpoints past the branch point were refused: an out_dir holding another run's ckpt-5 took
    the branch from step 20, and its metrics.jsonl showed the other run's steps 1-5, then this one's."""
    _, cfg, run_dir, _, _ = trained
    other = tmp_path / "other"
    shutil.copytree(run_dir / "ckpt-00000010", other / "ckpt-00000005")
    base = to_dict(cfg) | {"resume": str(run_dir / "ckpt-00000020"), "max_steps": 22}
    refusal = r"holds checkpoints of another history \(ckpt-00000005\): continuing .*resume=auto continues the"
    with pytest.raises(ResumeRefused, match=refusal):
        make_trainer(from_dict(TrainConfig, base | {"out_dir": str(other)}))
    # A folder with only the metrics of a run that never saved: none of its records are this history's.
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 9.0}) + "\n" for s in (1, 2, 21)))
    trainer = make_trainer(from_dict(TrainConfig, base | {"out_dir": str(fresh)}))
    trainer.fit()
    trainer.close()
    assert [r["step"] for r in read_metrics(fresh / "metrics.jsonl") if "loss" in r] == [21, 22]

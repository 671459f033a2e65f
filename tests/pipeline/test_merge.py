"""`--shard i/n` parts and `--merge` while other jobs run on the same store: one writer per store
and per part, and a merged manifest never points at shards that have changed under it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from prepare_helpers import ROOT, build, sentences, tiny_tokenizer, two_parts, write_jsonl

from common.lock import exclusive_lock
from pipeline.assemble import PrepareError
from pipeline.fast_encode import Encoder
from pipeline.sources import plan_chunks
from pipeline.store import StoreError, TokenStore


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory) -> Path:
    return tiny_tokenizer(tmp_path_factory.getbasetemp() / "tiny-tokenizer")


def _merge(out: Path, folder: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "bin/prepare.py", "--out", str(out), "--name", "m", "--data", str(folder), "--merge",
           "--quiet"]
    # PYTHONPATH: this checkout's code, not that of wherever the package is installed from
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_merge_refuses_a_store_or_part_that_another_job_is_writing(tmp_path, tokenizer):
    """The merge took no lock: during a full build of the same store it reset the store and wrote a
    manifest listing shards the build then deleted; a part being rebuilt was pointed at as it changed."""
    folder, _ = two_parts(tmp_path, tokenizer, files=4, docs=30, first=40)
    root = tmp_path / "sh" / "m"
    with exclusive_lock(root / ".lock"):  # a full build of the same store is running
        run = _merge(tmp_path / "sh", folder)
    assert run.returncode == 1 and f"{root}: another job (prepare, merge" in run.stderr
    assert not (root / "manifest.json").exists()
    with exclusive_lock(root / "part-1-of-2" / ".lock"):  # --shard 1/2 is being rebuilt
        run = _merge(tmp_path / "sh", folder)
    assert run.returncode == 1 and f"{root / 'part-1-of-2'}: another job (prepare, merge" in run.stderr
    assert not (root / "manifest.json").exists()
    assert _merge(tmp_path / "sh", folder).returncode == 0
    TokenStore(root, verify=True)


def test_rebuilding_a_part_unmarks_the_merged_store_until_the_next_merge(tmp_path, tokenizer):
    """The merged manifest stayed while a part was rebuilt: with a file edited at the same size, the
    store opened (the trainer does not verify) with the old checksums and counts over new shards."""
    folder, opts = two_parts(tmp_path, tokenizer, files=4, docs=30, first=50)
    root = build(tmp_path / "sh", tokenizer, merge=True, **opts)
    f0 = folder / "f0.jsonl"  # in part 0 (one chunk per file, dealt out in turn)
    f0.write_text(f0.read_text().replace("(50.5)", "(50.7)"))
    build(tmp_path / "sh", tokenizer, shard="0/2", **opts)
    with pytest.raises(StoreError, match="no manifest.json"):
        TokenStore(root)
    build(tmp_path / "sh", tokenizer, shard="1/2", **opts)  # a changed input changes the plan: every part
    merged = TokenStore(build(tmp_path / "sh", tokenizer, merge=True, **opts), verify=True)
    encoder = Encoder(str(tokenizer))
    texts = [encoder.decode(d[1:].tolist()) for split in ("train", "val") for d in merged.documents(split)]
    assert any("(50.7)" in t for t in texts) and not any("(50.5)" in t for t in texts)


def test_parts_built_from_copies_at_other_paths_are_refused_saying_why(tmp_path, tokenizer):
    """The plan fingerprint holds input paths and mtimes: a job on another machine reading its own copy
    of the corpus cut its part from another plan, and the refusal blamed only added or changed files."""
    folder, opts = two_parts(tmp_path, tokenizer, files=4, docs=20, first=60)
    copy = shutil.copytree(folder, tmp_path / "elsewhere" / "corpus")  # same names, sizes and mtimes
    build(tmp_path / "sh", tokenizer, shard="1/2", **{**opts, "data": [str(copy)]})
    with pytest.raises(PrepareError, match="every job must see the same paths with the same mtimes"):
        build(tmp_path / "sh", tokenizer, merge=True, **opts)


def test_merged_sources_are_listed_in_plan_order_like_a_single_job(tmp_path, tokenizer):
    folder, opts = two_parts(tmp_path, tokenizer, files=4, docs=20, first=70)  # f0, f2 in part 0; f1, f3 in 1
    merged = TokenStore(build(tmp_path / "sh", tokenizer, merge=True, **opts)).manifest["sources"]
    full = TokenStore(build(tmp_path / "full", tokenizer, **opts)).manifest["sources"]
    assert merged == full and [Path(s["path"]).name for s in full] == [f"f{k}.jsonl" for k in range(4)]


def test_merged_sources_follow_the_plan_when_a_file_spans_parts(tmp_path, tokenizer):
    """With one chunk per file, files dealt out in turn come back in plan order by their rank in each
    part alone, so a mutation that recorded ranks instead of plan places passed every test. Here a file
    of three chunks gives c (second in part 0) and b (second in part 1) the same rank."""
    folder = tmp_path / "corpus"
    big = write_jsonl(folder / "a.jsonl", sentences(1, 400))
    assert len(plan_chunks([big], 1 << 16)) == 3  # a: chunks 0-2, b: 3, c: 4; part 0 holds a, c and part 1 a, b
    write_jsonl(folder / "b.jsonl", sentences(2, 10))
    write_jsonl(folder / "c.jsonl", sentences(3, 10))
    opts = dict(data=[str(folder)], name="m", workers=1, clean_preset="minimal", chunk_bytes=1 << 16)
    for i in range(2):
        build(tmp_path / "sh", tokenizer, shard=f"{i}/2", **opts)
    merged = TokenStore(build(tmp_path / "sh", tokenizer, merge=True, **opts)).manifest["sources"]
    assert [Path(s["path"]).name for s in merged] == ["a.jsonl", "b.jsonl", "c.jsonl"]


def test_merge_refuses_a_missing_part_mixed_splits_and_a_renamed_part(tmp_path, tokenizer):
    """The merge's checks that the parts make one store: every part i/n present, one n, each part in the
    folder its manifest names. With each of these checks mutated away every test passed."""
    _, opts = two_parts(tmp_path, tokenizer, files=2, docs=10, first=80)
    root = tmp_path / "sh" / "m"
    (root / "part-1-of-2").rename(root / "away")
    with pytest.raises(PrepareError, match=r"parts 1/2 missing; run --shard for them"):
        build(tmp_path / "sh", tokenizer, merge=True, **opts)
    shutil.copytree(root / "away", root / "part-0-of-3")
    with pytest.raises(PrepareError, match=r"parts of different splits \(of-2, of-3\)"):
        build(tmp_path / "sh", tokenizer, merge=True, **opts)
    shutil.rmtree(root / "part-0-of-3")
    shutil.copytree(root / "part-0-of-2", root / "part-1-of-2")  # part 0 under part 1's name
    with pytest.raises(PrepareError, match=r"part-1-of-2: holds part 0/2, not the one its name says"):
        build(tmp_path / "sh", tokenizer, merge=True, **opts)
    # --shard 1/2 must rebuild that copy, not find it "up to date": each part's fingerprint names its
    # part (a mutation leaving the part out passed every test)
    build(tmp_path / "sh", tokenizer, shard="1/2", **opts)
    assert TokenStore(root / "part-1-of-2").manifest["part"]["index"] == 1
    shutil.rmtree(root / "away")
    TokenStore(build(tmp_path / "sh", tokenizer, merge=True, **opts), verify=True)


def test_merge_names_the_rerun_for_a_stopped_part_and_refuses_a_whole_store_in_a_part_folder(tmp_path, tokenizer):
    """A part killed before its manifest was met with TokenStore's advice, `make prepare NAME=part-1-of-2
    ... --out <root>`: that builds a whole store (no --shard) in the part's folder, which the merge then
    met with a KeyError traceback on its missing "part" section."""
    _, opts = two_parts(tmp_path, tokenizer, files=2, docs=10, first=90)
    root = tmp_path / "sh" / "m"
    (root / "part-1-of-2" / "manifest.json").unlink()  # as a kill -9 before the end of --shard 1/2 leaves it
    with pytest.raises(PrepareError, match=r"part-1-of-2: not a finished part \(no manifest.json.*rerun --shard 1/2") \
            as err:
        build(tmp_path / "sh", tokenizer, merge=True, **opts)
    assert "NAME=" not in str(err.value)
    build(root, tokenizer, **{**opts, "name": "part-1-of-2"})  # the old advice, followed
    with pytest.raises(PrepareError, match=r"part-1-of-2: holds a store built without --shard.*rerun --shard 1/2"):
        build(tmp_path / "sh", tokenizer, merge=True, **opts)
    build(tmp_path / "sh", tokenizer, shard="1/2", **opts)
    TokenStore(build(tmp_path / "sh", tokenizer, merge=True, **opts), verify=True)


def test_a_merge_over_a_store_built_without_shard_says_it_replaces_it(tmp_path, tokenizer, caplog):
    """A rebuild that replaces a store warns that runs on it cannot resume; a --merge deleted a whole
    single-job store in the same folder without a word."""
    _, opts = two_parts(tmp_path, tokenizer, files=4, docs=30, first=60)
    root = build(tmp_path / "sh", tokenizer, **opts)  # a whole store where the parts will be merged
    with caplog.at_level("WARNING", logger="pipeline"):
        build(tmp_path / "sh", tokenizer, merge=True, **opts)
    assert f"{root}: replacing the store built there without --shard" in caplog.text
    TokenStore(root, verify=True)


def test_parts_of_different_chunk_sizes_are_refused_naming_the_parts_and_sizes(tmp_path, tokenizer):
    """The refusal said only that one part's folder differed from part 0's in chunk_bytes, blaming whichever
    part was not the first, with no sizes to tell which --chunk-bytes each job was given."""
    _, opts = two_parts(tmp_path, tokenizer, files=2, docs=10, first=80)
    build(tmp_path / "sh", tokenizer, shard="0/2", **{**opts, "chunk_bytes": 1 << 16})  # the odd one, built last
    with pytest.raises(PrepareError, match=r"chunk_bytes 65536 in part-0-of-2; 16777216 in part-1-of-2\).*"
                                           r"Stale, built before part-0-of-2: part-1-of-2; rerun --shard 1/2"):
        build(tmp_path / "sh", tokenizer, merge=True, **opts)


def test_a_part_without_its_manifest_is_told_to_rerun_its_shard_job(tmp_path, tokenizer):
    """TokenStore's advice for a part folder without a manifest (its job killed, or the trainer pointed at
    a part) was `make prepare NAME=part-1-of-2`, which builds a whole store (no --shard) in it."""
    _, opts = two_parts(tmp_path, tokenizer, files=2, docs=10, first=90)
    part = tmp_path / "sh" / "m" / "part-1-of-2"
    (part / "manifest.json").unlink()
    out = tmp_path / "sh"
    with pytest.raises(StoreError) as err:
        TokenStore(part)
    assert f"rerun bin/prepare.py --out {out} --name m --shard 1/2 (same --data and options as the other jobs), " \
           f"then merge the parts (bin/prepare.py --out {out} --name m --merge)" in str(err.value)
    assert "NAME=" not in str(err.value)
    build(out, tokenizer, shard="1/2", **opts)  # the advice, followed
    TokenStore(part, verify=True)


def _part_rebuilt_elsewhere_and_copied_in(tmp_path: Path, tokenizer: Path, opts: dict) -> Path:
    """Part 1 rebuilt on another machine whose copy of f1 differs in content only (same size and mtime,
    which rsync -a's quick check leaves alone), then copied over this machine's part as rsync -a does
    (new files, mtimes kept). Its inputs_fingerprint is the old one; only its content differs."""
    f1 = Path(opts["data"][0]) / "f1.jsonl"  # in part 1 (one chunk per file, dealt out in turn)
    st = f1.stat()
    f1.write_text(f1.read_text().replace("(61.3)", "(61.4)"))
    os.utime(f1, ns=(st.st_atime_ns, st.st_mtime_ns))
    built = build(tmp_path / "elsewhere", tokenizer, shard="1/2", **opts)
    part = tmp_path / "sh" / "m" / "part-1-of-2"
    shutil.rmtree(part)
    shutil.copytree(built, part)
    return part


def test_a_part_replaced_by_a_copy_is_merged_again_and_a_store_open_on_it_says_to_merge(tmp_path, tokenizer):
    """The merge took the parts' inputs_fingerprint for their content: a part rebuilt elsewhere and copied
    in, with the same fingerprint and shard sizes, left the merged manifest "up to date", vouching with its
    old checksums and counts for the new shards; a store open on it said only "open it again"."""
    folder, opts = two_parts(tmp_path, tokenizer, files=4, docs=30, first=60)
    root = build(tmp_path / "sh", tokenizer, merge=True, **opts)
    opened = TokenStore(root)
    old = TokenStore(root / "part-1-of-2").manifest
    new = TokenStore(_part_rebuilt_elsewhere_and_copied_in(tmp_path, tokenizer, opts)).manifest
    # What the old check and the shard sizes see of the change: nothing.
    assert new["inputs_fingerprint"] == old["inputs_fingerprint"]
    sizes = lambda m: [(s["size"], s["documents"]) for split in ("train", "val") for s in m["splits"][split]["shards"]]
    assert sizes(new) == sizes(old) and new["splits"] != old["splits"]
    merge_line = rf"bin/prepare.py --out {tmp_path / 'sh'} --name m --merge"
    with pytest.raises(StoreError, match=rf"part-1-of-2/train-00000.bin\).*{merge_line}"):
        opened.shards("train")
    with pytest.raises(StoreError, match=rf"{root / 'part-1-of-2'}: rebuilt or replaced since the merge.*{merge_line}"):
        TokenStore(root)
    merged = TokenStore(build(tmp_path / "sh", tokenizer, merge=True, **opts), verify=True)
    encoder = Encoder(str(tokenizer))
    texts = [encoder.decode(d[1:].tolist()) for split in ("train", "val") for d in merged.documents(split)]
    assert any("(61.4)" in t for t in texts) and not any("(61.3)" in t for t in texts)


def test_a_merged_manifest_without_part_manifests_is_merged_again(tmp_path, tokenizer):
    """A store merged by the version before part_manifests was recorded: stale, not a KeyError."""
    _, opts = two_parts(tmp_path, tokenizer, files=2, docs=10, first=70)
    root = build(tmp_path / "sh", tokenizer, merge=True, **opts)
    manifest = json.loads((root / "manifest.json").read_text())
    del manifest["part_manifests"]
    (root / "manifest.json").write_text(json.dumps(manifest))
    TokenStore(root, verify=True)  # still a store the trainer reads
    build(tmp_path / "sh", tokenizer, merge=True, **opts)
    assert set(TokenStore(root, verify=True).manifest["part_manifests"]) == {"part-0-of-2", "part-1-of-2"}

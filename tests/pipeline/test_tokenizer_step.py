"""pipeline/tokenizer_step.py: a store's tokenizer and name are not replaced by accident. Two corpora in
folders of the same name (the default --name) silently rebuilt one store from the other's data with
the first one's tokenizer, and `make tokenizer` silently broke the finished store using its tokenizer."""

from __future__ import annotations

import gzip
import json
import os

import pytest
from prepare_helpers import sentences, write_jsonl

from common.files import sha256_file
from common.lock import exclusive_lock
from pipeline import tokenizer_step
from pipeline.config import PrepareConfig
from pipeline.prepare import main, prepare
from pipeline.store import TokenStore
from pipeline.tokenizer_step import tokenizer_main


def _sources(store) -> list[str]:
    return [s["path"] for s in json.loads((store / "manifest.json").read_text())["sources"]]


def test_a_store_of_other_inputs_is_replaced_only_on_overwrite(tmp_path, capsys):
    first = write_jsonl(tmp_path / "one" / "corpus" / "a.jsonl", sentences(1, 300))
    other = write_jsonl(tmp_path / "two" / "corpus" / "b.jsonl", sentences(2, 300))
    common = ["--out", str(tmp_path / "cache"), "--clean-preset", "minimal", "--quiet", "--vocab-size", "300"]
    assert main(["--data", str(first.parent), *common]) == 0  # store "corpus", tokenizer trained on it
    store = tmp_path / "cache" / "corpus"
    tokenizer = sha256_file(store / "tokenizer.json")

    assert main(["--data", str(other.parent), *common]) == 1
    err = capsys.readouterr().err
    assert f"{store} holds a store of other inputs" in err and "--overwrite" in err and "NAME=" in err
    assert _sources(store) == [str(first)] and sha256_file(store / "tokenizer.json") == tokenizer
    TokenStore(store, verify=True)

    more = write_jsonl(tmp_path / "one" / "extra.jsonl", sentences(3, 50))  # the same corpus grown: no refusal
    assert main(["--data", str(first.parent), "--data", str(more), *common]) == 0
    assert _sources(store) == [str(first), str(more)]

    assert main(["--data", str(other.parent), "--overwrite", *common]) == 0
    assert _sources(store) == [str(other)]
    assert sha256_file(store / "tokenizer.json") != tokenizer  # trained anew, on this corpus


def test_a_shard_job_is_refused_where_a_store_of_other_inputs_stands(tmp_path, capsys):
    """A part is merged into the store above it: a --shard job of another corpus under the same name
    would end in replacing that store, so it is refused like a full build (a mutation checking only
    the part's own folder passed every test)."""
    first = write_jsonl(tmp_path / "one" / "corpus" / "a.jsonl", sentences(1, 300))
    other = write_jsonl(tmp_path / "two" / "corpus" / "b.jsonl", sentences(2, 300))
    common = ["--out", str(tmp_path / "cache"), "--clean-preset", "minimal", "--quiet", "--vocab-size", "300"]
    assert main(["--data", str(first.parent), *common]) == 0
    store = tmp_path / "cache" / "corpus"
    assert main(["--data", str(other.parent), "--shard", "0/2", *common]) == 1
    assert f"{store} holds a store of other inputs" in capsys.readouterr().err
    assert not (store / "part-0-of-2").exists() and _sources(store) == [str(first)]


def test_make_tokenizer_keeps_the_tokenizer_a_store_uses_unless_overwrite(tmp_path, capsys):
    data = write_jsonl(tmp_path / "d" / "a.jsonl", sentences(4, 300))
    common = ["--data", str(data), "--out", str(tmp_path), "--name", "s", "--clean-preset", "minimal", "--quiet"]
    assert tokenizer_main([*common, "--vocab-size", "300"]) == 0  # no store yet: trained freely
    assert main([*common, "--vocab-size", "300"]) == 0
    store = tmp_path / "s"
    before = sha256_file(store / "tokenizer.json")

    assert tokenizer_main([*common, "--vocab-size", "320"]) == 1
    assert "is the tokenizer of the store in" in capsys.readouterr().err
    assert sha256_file(store / "tokenizer.json") == before
    TokenStore(store, verify=True)
    # The same inputs and options train the same file: nothing to refuse (make tokenizer after make prepare).
    assert tokenizer_main([*common, "--vocab-size", "300"]) == 0
    assert "up to date" in capsys.readouterr().out and sha256_file(store / "tokenizer.json") == before
    assert not (store / "tokenizer.next.json").exists()

    assert tokenizer_main([*common, "--vocab-size", "320", "--overwrite"]) == 0
    assert sha256_file(store / "tokenizer.json") != before


def test_make_tokenizer_after_make_prepare_does_not_train_again_to_say_it_is_up_to_date(tmp_path, capsys,
                                                                                          monkeypatch):
    """It trained on the whole sample (minutes on a large corpus) only to find the same file. A changed
    file (even just its mtime), option or tokenizer in place still trains."""
    trained = []
    real = tokenizer_step.train_from_paths
    monkeypatch.setattr(tokenizer_step, "train_from_paths", lambda *a, **k: trained.append(1) or real(*a, **k))
    data = write_jsonl(tmp_path / "d" / "a.jsonl", sentences(4, 300))
    common = ["--data", str(data), "--out", str(tmp_path), "--name", "s", "--clean-preset", "minimal", "--quiet",
              "--vocab-size", "300"]
    assert main(common) == 0 and len(trained) == 1  # prepare trains the missing tokenizer
    capsys.readouterr()
    assert tokenizer_main(common) == 0 and len(trained) == 1
    assert "up to date (trained from these inputs and options)" in capsys.readouterr().out
    os.utime(data, ns=(data.stat().st_atime_ns, data.stat().st_mtime_ns + 10**9))
    assert tokenizer_main(common) == 0 and len(trained) == 2  # same bytes, so the same file: still up to date
    assert "up to date (retraining gives the same tokenizer)" in capsys.readouterr().out
    assert tokenizer_main(common) == 0 and len(trained) == 2  # ... and known to be from now on
    assert tokenizer_main([*common, "--seed", "3"]) == 0 and len(trained) == 3
    tok = tmp_path / "s" / "tokenizer.json"
    tok.write_bytes(tok.read_bytes().replace(b'"version"', b' "version"', 1))  # not the file that was trained
    assert tokenizer_main(common) == 0 and len(trained) == 4


def test_a_vocab_size_mismatch_on_a_finished_store_advises_a_retrain_that_is_not_refused(tmp_path, capsys):
    """The advice was `make tokenizer ... VOCAB=...`, which make tokenizer then refused for want of --overwrite."""
    data = write_jsonl(tmp_path / "d" / "a.jsonl", sentences(4, 300))
    common = ["--data", str(data), "--out", str(tmp_path), "--name", "s", "--clean-preset", "minimal", "--quiet"]
    assert main([*common, "--vocab-size", "300"]) == 0
    assert main([*common, "--vocab-size", "320"]) == 1
    err = capsys.readouterr().err
    assert "has a vocabulary of 300, not --vocab-size 320" in err and "ARGS=--overwrite" in err
    assert tokenizer_main([*common, "--vocab-size", "320", "--overwrite"]) == 0  # the advice, followed
    assert main([*common, "--vocab-size", "320"]) == 0
    assert TokenStore(tmp_path / "s", verify=True).vocab_size == 320
    # Without a finished store using it, the tokenizer is retrained freely: no flag to mention.
    (tmp_path / "s" / "manifest.json").unlink()
    assert main([*common, "--vocab-size", "300"]) == 1
    assert "(same DATA and NAME, VOCAB=...)" in capsys.readouterr().err


def test_make_tokenizer_keeps_the_tokenizer_finished_shard_parts_use(tmp_path, capsys):
    """Before --merge there is no store in the root folder, only finished parts whose manifests point at
    ../tokenizer.json: retraining it left every part (and the merge) unusable."""
    data = write_jsonl(tmp_path / "d" / "a.jsonl", sentences(6, 300))
    common = ["--data", str(data), "--out", str(tmp_path), "--name", "s", "--clean-preset", "minimal", "--quiet"]
    assert tokenizer_main([*common, "--vocab-size", "300"]) == 0
    assert main([*common, "--shard", "1/2"]) == 0
    root = tmp_path / "s"
    before = sha256_file(root / "tokenizer.json")

    assert tokenizer_main([*common, "--vocab-size", "320"]) == 1
    assert f"is the tokenizer of the store in {root / 'part-1-of-2'}" in capsys.readouterr().err
    assert sha256_file(root / "tokenizer.json") == before
    assert main([*common, "--shard", "0/2"]) == 0 and main([*common, "--merge"]) == 0
    TokenStore(root, verify=True)

    assert tokenizer_main([*common, "--vocab-size", "320"]) == 1
    assert f"of the stores in {root}, {root / 'part-0-of-2'}, {root / 'part-1-of-2'}" in capsys.readouterr().err
    assert tokenizer_main([*common, "--vocab-size", "320", "--overwrite"]) == 0
    assert sha256_file(root / "tokenizer.json") != before


def test_a_shard_job_does_not_replace_the_tokenizer_its_siblings_share(tmp_path, capsys):
    """Each --shard job locks only its own part: installing its --tokenizer over the shared one broke
    the finished store (and any finished part) encoded with the old one."""
    data = write_jsonl(tmp_path / "d" / "a.jsonl", sentences(5, 300))
    common = ["--data", str(data), "--out", str(tmp_path), "--name", "s", "--clean-preset", "minimal", "--quiet"]
    assert main([*common, "--vocab-size", "300"]) == 0
    other = tmp_path / "other" / "tokenizer.json"
    assert tokenizer_main([*common, "--name", "o", "--vocab-size", "320"]) == 0
    other.parent.mkdir()
    (tmp_path / "o" / "tokenizer.json").rename(other)

    assert main([*common, "--shard", "0/2", "--tokenizer", str(other)]) == 1
    assert "is shared by all --shard parts" in capsys.readouterr().err
    TokenStore(tmp_path / "s", verify=True)
    assert main([*common, "--shard", "0/2", "--tokenizer", str(tmp_path / "s" / "tokenizer.json")]) == 0


def test_the_foreign_store_check_spares_moved_corpora_and_covers_shard_jobs(tmp_path, capsys):
    """Paths compared as strings refused a corpus that had merely moved (or the Shakespeare source after
    the venv moved); a --shard job checked only its part folder, so it could replace another corpus's store."""
    first = write_jsonl(tmp_path / "one" / "corpus" / "a.jsonl", sentences(1, 300))
    common = ["--out", str(tmp_path / "cache"), "--clean-preset", "minimal", "--quiet", "--vocab-size", "300"]
    assert main(["--data", str(first.parent), *common]) == 0
    moved = tmp_path / "moved" / "corpus"
    moved.parent.mkdir()
    first.parent.rename(moved)
    assert main(["--data", str(moved), *common]) == 0  # the same files: a rebuild, not another corpus

    other = write_jsonl(tmp_path / "two" / "corpus" / "b.jsonl", sentences(2, 300))
    assert main(["--data", str(other.parent), *common, "--shard", "0/2"]) == 1
    assert "holds a store of other inputs" in capsys.readouterr().err
    TokenStore(tmp_path / "cache" / "corpus", verify=True)


def test_overwrite_keeps_the_old_tokenizer_until_it_holds_the_store(tmp_path, capsys):
    """--overwrite deleted the replaced corpus's tokenizer before taking the store's lock, so a build
    holding it lost the file under its workers; a --shard --overwrite job encoded with that corpus's
    tokenizer. Now the new one is trained beside it and renamed over once the run holds the lock."""
    first = write_jsonl(tmp_path / "one" / "corpus" / "a.jsonl", sentences(1, 300))
    other = write_jsonl(tmp_path / "two" / "corpus" / "b.jsonl", sentences(2, 300))
    common = ["--out", str(tmp_path / "cache"), "--clean-preset", "minimal", "--quiet", "--vocab-size", "300"]
    assert main(["--data", str(first.parent), *common]) == 0
    store = tmp_path / "cache" / "corpus"
    before = sha256_file(store / "tokenizer.json")

    busy = exclusive_lock(store / ".lock")  # another build of this store is running
    with busy:
        assert main(["--data", str(other.parent), "--overwrite", *common]) == 1
    assert "another job (prepare, merge or make tokenizer) is using this store" in capsys.readouterr().err
    assert sha256_file(store / "tokenizer.json") == before and _sources(store) == [str(first)]
    assert not (store / "tokenizer.next.json").exists()
    TokenStore(store, verify=True)

    assert main(["--data", str(other.parent), "--overwrite", "--shard", "0/2", *common]) == 1
    assert "is the tokenizer of the corpus being replaced" in capsys.readouterr().err
    assert sha256_file(store / "tokenizer.json") == before

    assert main(["--data", str(other.parent), "--overwrite", *common]) == 0
    assert _sources(store) == [str(other)] and sha256_file(store / "tokenizer.json") != before
    assert not (store / "tokenizer.next.json").exists()
    TokenStore(store, verify=True)


def test_make_tokenizer_refuses_a_store_or_part_being_built(tmp_path, capsys):
    """make tokenizer took no lock: it replaced the file a running build (or --shard job, whose part
    has no manifest yet to protect it) was encoding with."""
    data = write_jsonl(tmp_path / "d" / "a.jsonl", sentences(6, 300))
    common = ["--data", str(data), "--out", str(tmp_path), "--name", "s", "--clean-preset", "minimal", "--quiet",
              "--vocab-size", "300"]
    assert tokenizer_main(common) == 0
    before = sha256_file(tmp_path / "s" / "tokenizer.json")
    (tmp_path / "s" / "part-0-of-2").mkdir()
    for busy in (tmp_path / "s", tmp_path / "s" / "part-0-of-2"):
        with exclusive_lock(busy / ".lock"):
            assert tokenizer_main([*common, "--overwrite", "--seed", "1"]) == 1
        assert f"{busy}: another job (prepare, merge or make tokenizer) is using this store" in capsys.readouterr().err
        assert sha256_file(tmp_path / "s" / "tokenizer.json") == before
    assert tokenizer_main([*common, "--overwrite", "--seed", "1"]) == 0


def test_skip_bad_files_holds_when_prepare_trains_the_tokenizer(tmp_path, capsys, caplog):
    """The tokenizer's sample read every file without --skip-bad-files: on a fresh store any bad file
    stopped the run that the same data passed once a tokenizer existed."""
    data = write_jsonl(tmp_path / "d" / "good.jsonl", sentences(6, 300))
    bad = tmp_path / "d" / "bad.jsonl.gz"
    bad.write_bytes(gzip.compress(data.read_bytes())[:-10])  # truncated: readable up to near its end
    common = ["--data", str(data.parent), "--out", str(tmp_path / "cache"), "--clean-preset", "minimal", "--quiet",
              "--vocab-size", "300"]
    assert tokenizer_main(common) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {bad}:") and "cannot read as jsonl" in err
    assert main([*common, "--skip-bad-files"]) == 0
    assert [r.getMessage() for r in caplog.records if "tokenizer sample" in r.getMessage()] == [
        f"{err.removeprefix('error: ').splitlines()[0]} (left out of the tokenizer sample: --skip-bad-files)"]
    manifest = json.loads((tmp_path / "cache" / "d" / "manifest.json").read_text())
    assert [b["path"] for b in manifest["stats"]["bad_files"]] == [str(bad)]


def test_a_store_inside_the_folder_it_reads_does_not_read_itself(tmp_path):
    """With --out the corpus's parent, the default --name puts the store in the corpus folder: a rerun
    read its tokenizer.json and manifest.json as .json input and rebuilt from them."""
    data = write_jsonl(tmp_path / "corpus" / "a.jsonl", sentences(7, 300))
    common = ["--data", str(data.parent), "--out", str(tmp_path), "--clean-preset", "minimal", "--quiet",
              "--vocab-size", "300"]
    assert main(common) == 0
    store = tmp_path / "corpus"
    manifest = (store / "manifest.json").read_bytes()
    assert main(common) == 0  # up to date: the same single input
    assert (store / "manifest.json").read_bytes() == manifest and _sources(store) == [str(data)]


def test_a_busy_store_is_refused_before_its_tokenizer_is_trained_or_touched(tmp_path, capsys):
    """prepare trained (or chose) its tokenizer before taking the store's lock: a run refused as busy had
    already written tokenizer.json under the job holding it; and the scratch name of a retrained
    tokenizer was deleted wherever it was, a user's --tokenizer of that name included."""
    data = write_jsonl(tmp_path / "d" / "a.jsonl", sentences(8, 300))
    common = ["--data", str(data), "--out", str(tmp_path), "--name", "s", "--clean-preset", "minimal", "--quiet",
              "--vocab-size", "300"]
    (tmp_path / "s").mkdir()
    with exclusive_lock(tmp_path / "s" / ".lock"):
        assert main(common) == 1
    assert "is using this store" in capsys.readouterr().err
    assert not (tmp_path / "s" / "tokenizer.json").exists()

    mine = tmp_path / "mine" / "tokenizer.next.json"
    assert tokenizer_main([*common, "--name", "t"]) == 0
    mine.parent.mkdir()
    (tmp_path / "t" / "tokenizer.json").rename(mine)
    assert main([*common, "--tokenizer", str(mine)]) == 0
    assert mine.is_file() and sha256_file(mine) == sha256_file(tmp_path / "s" / "tokenizer.json")


def test_a_refused_shard_job_leaves_no_part_folder(tmp_path, capsys):
    """The part folder was made before the tokenizer checks: a --shard 0/4 refused for a missing
    tokenizer left part-0-of-4/, and a later --merge of 2 parts stopped at 'parts of different splits'."""
    data = write_jsonl(tmp_path / "d" / "a.jsonl", sentences(10, 300))
    common = ["--data", str(data), "--out", str(tmp_path), "--name", "s", "--clean-preset", "minimal", "--quiet",
              "--vocab-size", "300"]
    assert main([*common, "--shard", "0/4"]) == 1
    assert "is missing: run `make tokenizer` (same DATA/NAME)" in capsys.readouterr().err
    assert not (tmp_path / "s" / "part-0-of-4").exists()
    assert tokenizer_main(common) == 0
    assert main([*common, "--shard", "0/2"]) == 0 and main([*common, "--shard", "1/2"]) == 0
    assert main([*common, "--merge"]) == 0


def test_prepare_says_when_it_keeps_a_tokenizer_trained_under_other_options(tmp_path, caplog):
    """prepare --seed 1 (or other cleaning, sample size, ...) over a store kept the tokenizer trained with
    seed 0 without a word, so the store depended on the folder's history: the same command in an empty
    folder trains another tokenizer. It is still kept (a grown corpus keeps its ids), with a warning
    naming the options; a file added under the same options says nothing."""
    data = write_jsonl(tmp_path / "d" / "a.jsonl", sentences(4, 300))
    common = ["--data", str(data), "--out", str(tmp_path), "--name", "s", "--clean-preset", "minimal", "--quiet"]
    assert main([*common, "--vocab-size", "300"]) == 0
    tokenizer = tmp_path / "s" / "tokenizer.json"
    before = sha256_file(tokenizer)
    with caplog.at_level("WARNING", logger="pipeline"):
        assert main([*common, "--seed", "1", "--tokenizer-sample-bytes", "100000"]) == 0
    assert sha256_file(tokenizer) == before
    assert [r.getMessage() for r in caplog.records if "trained under" in r.getMessage()] == [
        f"{tokenizer} was trained under other values of --tokenizer-sample-bytes, --seed and is kept: the store "
        "is encoded with it. To train it anew under these options, run bin/tokenizer.py with them and "
        '--overwrite (make tokenizer ARGS="... --overwrite"), then this command again']
    caplog.clear()
    more = write_jsonl(tmp_path / "d" / "b.jsonl", sentences(5, 50))
    with caplog.at_level("WARNING", logger="pipeline"):
        assert main([*common, "--data", str(more)]) == 0  # no --vocab-size: the tokenizer's own, no warning
    assert "trained under" not in caplog.text and sha256_file(tokenizer) == before
    # Trained apart with its own options (make tokenizer ARGS=...), then a plain prepare: as documented.
    assert tokenizer_main([*common, "--vocab-size", "300", "--seed", "5", "--overwrite"]) == 0
    with caplog.at_level("WARNING", logger="pipeline"):
        assert main(common) == 0
    assert "trained under" not in caplog.text


def _kept_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "trained under" in r.getMessage()]


@pytest.mark.parametrize("how", ["--seed 0", "seed=0", "--config", "in code"])
def test_an_option_given_at_its_default_value_is_checked_against_the_tokenizer(tmp_path, caplog, how):
    """Whether prepare checked an option against the tokenizer's was judged by its value differing from
    the default, so `--seed 0` (or seed: 0 in a --config file) over a tokenizer trained with seed 5 kept
    it without a word, though the same command in an empty folder trains another tokenizer. A config
    built in code states every option (nothing tells which were meant), so each is checked."""
    data = write_jsonl(tmp_path / "d" / "a.jsonl", sentences(4, 300))
    common = ["--data", str(data), "--out", str(tmp_path), "--name", "s", "--clean-preset", "minimal", "--quiet"]
    assert tokenizer_main([*common, "--vocab-size", "300", "--seed", "5"]) == 0
    config = tmp_path / "prepare.yml"
    config.write_text("seed: 0\n")
    given = ["--config", str(config)] if how == "--config" else how.split()
    with caplog.at_level("WARNING", logger="pipeline"):
        if how == "in code":
            prepare(PrepareConfig(data=[str(data)], out=str(tmp_path), name="s", clean_preset="minimal", quiet=True))
        else:
            assert main([*common, *given]) == 0
    assert len(warned := _kept_warnings(caplog)) == 1 and "other values of --seed and is kept" in warned[0]


def test_clean_preset_auto_is_checked_as_the_preset_it_stands_for(tmp_path, caplog):
    """`--clean-preset auto` is the default's spelling, so it was never checked: over a tokenizer trained
    under `minimal`, a run cleaning with `web` (auto, for files) kept it without a word. Over one trained
    under `web`, auto is that same preset: nothing to say."""
    # Full stops, so that half the documents pass the web preset's C4 and Gopher rules.
    data = write_jsonl(tmp_path / "d" / "a.jsonl", [t.replace(" (", ". (") + "." for t in sentences(4, 300)])
    common = ["--data", str(data), "--out", str(tmp_path), "--quiet", "--vocab-size", "300"]
    assert tokenizer_main([*common, "--name", "m", "--clean-preset", "minimal"]) == 0
    assert tokenizer_main([*common, "--name", "w", "--clean-preset", "web"]) == 0
    with caplog.at_level("WARNING", logger="pipeline"):
        assert main([*common, "--name", "m", "--clean-preset", "auto"]) == 0
    assert len(warned := _kept_warnings(caplog)) == 1
    assert "other values of cleaning (--clean-preset, --clean) and is kept" in warned[0]
    caplog.clear()
    with caplog.at_level("WARNING", logger="pipeline"):
        assert main([*common, "--name", "w", "--clean-preset", "auto"]) == 0
    assert _kept_warnings(caplog) == []


def test_skip_bad_files_after_a_bad_file_keeps_the_tokenizer_without_a_warning(tmp_path, caplog):
    """A bad file added to a store's corpus stops prepare, whose error says to rerun with --skip-bad-files;
    that rerun was warned the tokenizer was trained under another --skip-bad-files and told to retrain it
    (new ids), though training without the flag met no bad file and so gives the same tokenizer with it."""
    folder = tmp_path / "d"
    write_jsonl(folder / "a.jsonl", sentences(4, 300))
    common = ["--data", str(folder), "--out", str(tmp_path), "--name", "s", "--clean-preset", "minimal", "--quiet"]
    assert main([*common, "--vocab-size", "300"]) == 0
    before = sha256_file(tmp_path / "s" / "tokenizer.json")
    (folder / "b.jsonl.gz").write_bytes(gzip.compress(b'{"text": "a"}\n')[:20])  # cut short
    assert main(common) == 1
    with caplog.at_level("WARNING", logger="pipeline"):
        assert main([*common, "--skip-bad-files"]) == 0
    assert "trained under" not in caplog.text and sha256_file(tmp_path / "s" / "tokenizer.json") == before

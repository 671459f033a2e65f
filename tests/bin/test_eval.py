"""bin/eval.py: windows, and loss / perplexity / bits per byte checked against independent numbers."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from dataclasses import asdict

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from bin_util import TEXTS, make_run
from script_loader import load_script
from tokenizers import Tokenizer

from pipeline.clean import CleanConfig, clean_text
from pipeline.fast_encode import Encoder
from pipeline.store import TokenStore, write_store
from pipeline.tokenizer import BOS_ID
from train.export import load

ev = load_script("eval")


def test_windows_predict_every_token_once():
    arrays = [np.arange(10), np.arange(10, 23)]  # 23 tokens across two arrays
    wins = list(ev.windows(arrays, size=5))
    assert [len(w) for w in wins] == [6, 6, 6, 6, 3]
    targets = np.concatenate([w[1:] for w in wins])
    assert targets.tolist() == list(range(1, 23))
    for a, b in zip(wins, wins[1:], strict=False):
        assert a[-1] == b[0]  # each window starts where the previous one's predictions ended
    capped = list(ev.windows(arrays, size=5, max_tokens=7))
    assert sum(len(w) - 1 for w in capped) == 7
    assert list(ev.windows([np.arange(1)], size=5)) == []


def manual_nats(model, tokens: np.ndarray, block: int) -> tuple[float, int]:
    """Sum of -log p(next token) over non-overlapping windows, computed with plain forwards."""
    nats, n = 0.0, 0
    with torch.no_grad():
        for lo in range(0, len(tokens) - 1, block):
            chunk = torch.from_numpy(tokens[lo : lo + block + 1].astype(np.int64))[None]
            logits, _ = model(chunk[:, :-1], all_logits=True)
            nats += F.cross_entropy(logits[0].double(), chunk[0, 1:], reduction="sum").item()
            n += chunk.size(1) - 1
    return nats, n


def test_store_val_loss_matches_plain_forwards(run_dir, store_dir):
    loaded = load(run_dir)
    result = ev.eval_store(loaded, str(store_dir), "val", None, batch_size=3)
    store = TokenStore(store_dir)
    tokens = np.concatenate(store.shards("val"))
    nats, n = manual_nats(loaded.model, tokens, 32)
    assert result["tokens"] == n == len(tokens) - 1
    assert result["loss"] == pytest.approx(nats / n, rel=1e-5)
    assert result["perplexity"] == pytest.approx(math.exp(nats / n), rel=1e-5)
    val_bytes = sum(len(t.encode()) for t in TEXTS[:2])
    assert result["bits_per_byte"] == pytest.approx(nats / math.log(2) / val_bytes, rel=1e-5)


def test_uniform_model_scores_log_vocab(tmp_path, tokenizer_path, store_dir, capsys):
    """All-zero weights give uniform logits: loss ln V, perplexity V, bits/byte = log2 V * tokens / bytes."""
    run = make_run(tmp_path / "zero", tokenizer_path, store_dir)
    state_path = next(run.glob("ckpt-*")) / "state.pt"
    state = torch.load(state_path, weights_only=True)
    state["model"] = {k: torch.zeros_like(v) for k, v in state["model"].items()}
    torch.save(state, state_path)
    doc = tmp_path / "doc.txt"
    doc.write_text("the dog is feeling happy\n")
    assert ev.main(["--checkpoint", str(run), "--text", str(doc), "--clean-preset", "minimal", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    vocab = Encoder(tokenizer_path).vocab_size
    n = len(Encoder(tokenizer_path).encode("the dog is feeling happy"))  # [BOS] is context, never predicted
    assert result["tokens"] == n
    assert result["loss"] == pytest.approx(math.log(vocab), rel=1e-6)
    assert result["perplexity"] == pytest.approx(vocab, rel=1e-5)
    assert result["bits_per_byte"] == pytest.approx(math.log2(vocab) * n / len("the dog is feeling happy"), rel=1e-6)


def test_text_files_go_through_cleaning_and_the_tokenizer(run_dir, tmp_path, capsys):
    raw = "ROMEO:   But soft,\r\nwhat light\t\tthrough yonder window breaks?\n\n\n\n"
    (tmp_path / "a.txt").write_text(raw)
    (tmp_path / "b.jsonl").write_text(json.dumps({"text": raw}) + "\n" + json.dumps({"text": TEXTS[2]}) + "\n")
    loaded = load(run_dir)
    enc = Encoder(loaded.tokenizer_path)
    minimal = CleanConfig.for_source("minimal")
    docs = [clean_text(raw, minimal)[0], clean_text(TEXTS[2], minimal)[0]]
    assert docs[0] == "ROMEO: But soft,\nwhat light through yonder window breaks?"
    tokens = np.array([t for d in docs for t in [BOS_ID, *enc.encode(d)]])
    nats, n = manual_nats(loaded.model, tokens, 32)
    result = ev.eval_texts(loaded, [str(tmp_path / "b.jsonl")], minimal, None, batch_size=4)
    assert result["tokens"] == n and result["documents"] == 2
    assert result["loss"] == pytest.approx(nats / n, rel=1e-5)
    assert result["bits_per_byte"] == pytest.approx(nats / math.log(2) / sum(len(d.encode()) for d in docs),
                                                    rel=1e-5)
    one = ev.eval_texts(loaded, [str(tmp_path / "a.txt")], minimal, None, batch_size=4)
    assert one["tokens"] == len(enc.encode(docs[0]))
    # --max-tokens caps the predictions, and bits/byte then counts the bytes they cover.
    capped = ev.eval_texts(loaded, [str(tmp_path / "b.jsonl")], minimal, 10, batch_size=4)
    assert capped["tokens"] == 10


def test_cleaning_defaults_to_the_stores_and_can_drop_everything(run_dir, store_dir, tmp_path, capsys):
    manifest = ev.store_manifest(str(store_dir))
    assert ev.clean_config("store", manifest, "") == CleanConfig.for_source("minimal")  # the fixture records none
    manifest["clean"] = asdict(CleanConfig.for_source("shakespeare"))
    assert ev.clean_config("store", manifest, "") == CleanConfig.for_source("shakespeare")
    assert ev.clean_config("web", manifest, "") == CleanConfig()
    (tmp_path / "short.txt").write_text("Too short.")
    code = ev.main(["--checkpoint", str(run_dir), "--text", str(tmp_path / "short.txt"), "--clean-preset", "web"])
    assert code == 1 and "try --clean-preset minimal" in capsys.readouterr().err


def test_empty_inputs_get_advice_that_does_not_go_in_circles(run_dir, tokenizer_path, tmp_path, capsys):
    """`--text empty.txt --clean-preset minimal` said `try --clean-preset minimal`; a store built with
    --val-fraction 0 said `nothing to evaluate: fewer than two tokens`."""
    (tmp_path / "empty.txt").write_text("")
    assert ev.main(["--checkpoint", str(run_dir), "--text", str(tmp_path / "empty.txt"), "--clean-preset",
                    "minimal"]) == 1
    err = capsys.readouterr().err
    assert "cleaning dropped every document" in err and "files hold no text" in err and "try --clean" not in err
    enc = Encoder(tokenizer_path)
    store = tmp_path / "noval"
    write_store(store, {"train": [enc.encode(t) for t in TEXTS]}, vocab_size=enc.vocab_size,
                tokenizer_path=tokenizer_path, split={"val_fraction": 0.0})
    assert ev.main(["--checkpoint", str(run_dir), "--data", str(store), "--device", "cpu"]) == 1
    assert capsys.readouterr().err == (f"error: {store}: its val split holds 0 token(s), nothing to evaluate (built "
                                       "with --val-fraction 0); evaluate on --split train, or on files with --text\n")
    assert ev.main(["--checkpoint", str(run_dir), "--data", str(store), "--split", "train", "--device", "cpu"]) == 0


def test_a_text_file_that_cannot_be_read_is_one_line_naming_it(run_dir, tmp_path, capsys):
    """A missing --text file printed Python's `[Errno 2] No such file or directory: 'nope.txt'`; a folder
    named like a text file was a traceback."""
    folder = tmp_path / "folder.txt"
    folder.mkdir()
    for path, why in ((tmp_path / "nope.txt", "No such file or directory"), (folder, "Is a directory")):
        assert ev.main(["--checkpoint", str(run_dir), "--text", str(path), "--device", "cpu"]) == 1
        assert capsys.readouterr().err.endswith(f"\nerror: {path}: {why}\n")


def test_cli_store_default_and_max_tokens(run_dir, capsys):
    assert ev.main(["--checkpoint", str(run_dir), "--max-tokens", "20", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "val: 20 tokens" in out and "loss " in out and "perplexity " in out and "bits/byte " in out
    with pytest.raises(SystemExit):
        ev.main(["--checkpoint", str(run_dir), "--max-tokens", "0"])


def test_split_with_text_and_a_bad_device_are_refused(run_dir, tmp_path, capsys):
    """`--split train --text f` scored f and ignored --split; `--device tpu` was a torch traceback."""
    (tmp_path / "f.txt").write_text(TEXTS[0])
    with pytest.raises(SystemExit) as exc:
        ev.main(["--checkpoint", str(run_dir), "--split", "train", "--text", str(tmp_path / "f.txt")])
    assert exc.value.code == 2 and "--split chooses a store's split" in capsys.readouterr().err
    assert ev.main(["--checkpoint", str(run_dir), "--device", "tpu"]) == 2
    assert capsys.readouterr().err == "error: --device tpu: not a device name (cpu, cuda, cuda:1, mps, ...)\n"
    with pytest.raises(SystemExit) as exc:  # an unset variable (`--data "$STORE"`) scored the training store
        ev.main(["--checkpoint", str(run_dir), "--data", ""])
    assert exc.value.code == 2 and "argument --data: an empty path" in capsys.readouterr().err


def test_store_with_another_tokenizer_is_refused(run_dir, store_dir, tmp_path, capsys):
    other = tmp_path / "store"
    shutil.copytree(store_dir, other)
    manifest = json.loads((other / "manifest.json").read_text())
    # A store consistent with its own tokenizer (the store checks that), just not the model's.
    tokenizer = other / "tokenizer.json"
    tokenizer.write_bytes((store_dir / manifest["tokenizer"]["path"]).read_bytes() + b"\n")
    manifest["tokenizer"] = {"path": "tokenizer.json", "sha256": hashlib.sha256(tokenizer.read_bytes()).hexdigest()}
    (other / "manifest.json").write_text(json.dumps(manifest))
    assert ev.main(["--checkpoint", str(run_dir), "--data", str(other)]) == 1
    assert "ids mean other things" in capsys.readouterr().err


def _store_with(store_dir, root, **fields):
    shutil.copytree(store_dir, root)
    manifest = json.loads((root / "manifest.json").read_text())
    manifest.update(fields)
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def _run_trained_on(run, data: str, out_dir: str):
    """Rewrite the run's checkpoint as if `make train` ran with these (relative) data and out_dir."""
    path = next(run.glob("ckpt-*")) / "state.pt"
    state = torch.load(path, weights_only=True)
    state["config"] = {"data": data, "out_dir": out_dir}
    torch.save(state, path)
    return run


def test_text_is_read_from_the_stores_field(run_dir, store_dir, tmp_path, capsys):
    store = _store_with(store_dir, tmp_path / "store", text_field="body")
    (tmp_path / "b.jsonl").write_text(json.dumps({"body": TEXTS[2]}) + "\n")
    base = ["--checkpoint", str(run_dir), "--text", str(tmp_path / "b.jsonl"), "--json"]
    assert ev.main([*base, "--data", str(store)]) == 0
    assert json.loads(capsys.readouterr().out)["documents"] == 1
    assert ev.main([*base, "--text-field", "body"]) == 0
    capsys.readouterr()
    # Without the field: nothing was read, which is not cleaning's doing.
    assert ev.main(base) == 1
    err = capsys.readouterr().err
    assert f"no documents read from {tmp_path / 'b.jsonl'}" in err and "clean-preset" not in err


def test_relative_store_path_is_found_from_another_directory(tmp_path, tokenizer_path, store_dir, monkeypatch,
                                                            capsys):
    project = tmp_path / "project"
    _store_with(store_dir, project / "data" / "tiny", clean=asdict(CleanConfig.for_source("shakespeare")))
    run = _run_trained_on(make_run(project / "runs" / "x", tokenizer_path, store_dir), "data/tiny", "runs/x")
    (tmp_path / "doc.txt").write_text(TEXTS[0])
    monkeypatch.chdir(tmp_path)  # not the directory training ran in
    assert load(run).data == str(project / "data" / "tiny")
    assert ev.main(["--checkpoint", str(run), "--max-tokens", "5"]) == 0
    assert ev.main(["--checkpoint", str(run), "--text", "doc.txt"]) == 0
    assert "note:" not in capsys.readouterr().err


def test_unfound_store_cleaning_is_an_error_not_a_fallback(run_dir, tmp_path, monkeypatch, capsys):
    run = _run_trained_on(shutil.copytree(run_dir, tmp_path / "run"), "gone/tiny", "run")
    (tmp_path / "doc.txt").write_text(TEXTS[0])
    assert ev.main(["--checkpoint", str(run), "--text", str(tmp_path / "doc.txt")]) == 1
    err = capsys.readouterr().err
    assert "no store found at gone/tiny" in err and "--data" in err and "--clean-preset" in err
    assert ev.main(["--checkpoint", str(run), "--text", str(tmp_path / "doc.txt"), "--clean-preset", "minimal"]) == 0


def test_windows_read_in_pieces_and_a_two_token_tail_is_scored(monkeypatch):
    """A split is read READ_TOKENS at a time: windows must not depend on that size; a last window of two
    tokens (one prediction) counts. Mutations skipping every other piece, or dropping a two-token tail,
    passed every test (the fixtures' arrays are all smaller than one piece)."""
    arrays = [np.arange(10), np.arange(10, 23)]
    whole = [w.tolist() for w in ev.windows(arrays, size=5)]
    monkeypatch.setattr(ev, "READ_TOKENS", 3)
    assert [w.tolist() for w in ev.windows(arrays, size=5)] == whole
    assert [w.tolist() for w in ev.windows(arrays, size=5, max_tokens=8)] == [list(range(6)), [5, 6, 7, 8]]
    assert [w.tolist() for w in ev.windows([np.arange(7)], size=5)] == [list(range(6)), [5, 6]]


def test_bits_per_byte_under_max_tokens_counts_the_bytes_covered(run_dir, store_dir, tokenizer_path, tmp_path):
    """Bits per byte divides by the bytes of text the predicted tokens spell, for a store and for text
    files, and the text result says how many documents cleaning dropped. Under --max-tokens it scaled the
    split's bytes by the share of tokens scored: 1-4% off, either way, on Shakespeare (a reviewer's find)."""
    loaded = load(run_dir)
    hf = Tokenizer.from_file(str(tokenizer_path))

    def spelled(ids) -> int:  # the bytes of text these ids decode to, [BOS] none
        return len(hf.decode([int(i) for i in ids], skip_special_tokens=True).encode())

    full = ev.eval_store(loaded, str(store_dir), "val", None, batch_size=3)
    capped = ev.eval_store(loaded, str(store_dir), "val", 10, batch_size=3)
    val = np.concatenate(TokenStore(store_dir).shards("val"))
    assert capped["tokens"] == 10 < full["tokens"]
    for result, covered in ((full, sum(len(t.encode()) for t in TEXTS[:2])), (capped, spelled(val[1:11]))):
        nats = result["loss"] * result["tokens"]
        assert result["bits_per_byte"] == pytest.approx(nats / math.log(2) / covered, rel=1e-6)
    assert spelled(val[1:11]) != round(sum(len(t.encode()) for t in TEXTS[:2]) * 10 / full["tokens"])
    (tmp_path / "b.jsonl").write_text(json.dumps({"text": TEXTS[2]}) + "\n" + json.dumps({"text": "  "}) + "\n")
    minimal = CleanConfig.for_source("minimal")
    every = ev.eval_texts(loaded, [str(tmp_path / "b.jsonl")], minimal, None, batch_size=4)
    some = ev.eval_texts(loaded, [str(tmp_path / "b.jsonl")], minimal, 10, batch_size=4)
    assert every["dropped_by_cleaning"] == some["dropped_by_cleaning"] == 1 and every["documents"] == 1
    ids = Encoder(tokenizer_path).encode(TEXTS[2])
    for result, covered in ((every, len(TEXTS[2].encode())), (some, spelled(ids[:10]))):
        nats = result["loss"] * result["tokens"]
        assert result["bits_per_byte"] == pytest.approx(nats / math.log(2) / covered, rel=1e-6)


def test_dtype_bfloat16_scores_close_to_float32_and_the_report_names_it(run_dir, capsys):
    """The default on the CPU is float32; bf16 autocast (as the trainer evaluates on a GPU) moves the
    fixture's loss by ~6e-4 relative (float16: ~2e-4), well inside 5e-3, but does move it."""
    results = {}
    for dtype in (None, "bfloat16", "float16"):
        assert ev.main(["--checkpoint", str(run_dir), "--device", "cpu", "--json",
                        *(["--dtype", dtype] if dtype else [])]) == 0
        results[dtype] = json.loads(capsys.readouterr().out)
    plain = results.pop(None)
    assert plain["dtype"] == "float32"
    for dtype, result in results.items():
        assert result["dtype"] == dtype and result["tokens"] == plain["tokens"]
        assert result["loss"] != plain["loss"]
        assert result["loss"] == pytest.approx(plain["loss"], rel=5e-3)
        assert result["bits_per_byte"] == pytest.approx(plain["bits_per_byte"], rel=5e-3)
    assert ev.main(["--checkpoint", str(run_dir), "--device", "cpu", "--dtype", "bfloat16", "--max-tokens", "9"]) == 0
    assert "val: 9 tokens, bfloat16\nloss " in capsys.readouterr().out


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_scores_the_store_as_the_cpu_does(run_dir, capsys):
    """On a GPU the loss comes from the Triton loss kernel, on the CPU from the chunked op: both in
    float32 (without TF32), the same windows, the same numbers to float32 rounding. `auto` on the GPU
    is bf16 autocast (float16 without native bf16), within 5e-3 of float32 as on the CPU."""
    results = []
    for device in ("cpu", "cuda"):
        assert ev.main(["--checkpoint", str(run_dir), "--device", device, "--json", "--dtype", "float32"]) == 0
        results.append(json.loads(capsys.readouterr().out))
    on_cpu, on_gpu = results
    assert on_gpu["tokens"] == on_cpu["tokens"] > 0
    assert on_gpu["loss"] == pytest.approx(on_cpu["loss"], rel=1e-4)
    assert on_gpu["bits_per_byte"] == pytest.approx(on_cpu["bits_per_byte"], rel=1e-4)
    assert ev.main(["--checkpoint", str(run_dir), "--device", "cuda", "--json"]) == 0
    half = json.loads(capsys.readouterr().out)
    assert half["dtype"] == ("bfloat16" if torch.cuda.get_device_capability()[0] >= 8 else "float16")
    assert half["loss"] == pytest.approx(on_cpu["loss"], rel=5e-3)


def test_ctrl_c_is_one_line_and_exit_130(run_dir, monkeypatch, capsys):
    """Ctrl-C in the middle of scoring printed a KeyboardInterrupt traceback from inside torch."""
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(ev, "eval_store", interrupted)
    assert ev.main(["--checkpoint", str(run_dir), "--device", "cpu"]) == 130
    assert capsys.readouterr().err == "interrupted\n"

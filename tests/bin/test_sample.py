"""bin/sample.py: every option, run in-process on a random-init checkpoint (see conftest.py)."""

from __future__ import annotations

import io
import shutil

import pytest
import torch
from script_loader import load_script

from model.generate import generate
from pipeline.fast_encode import Encoder
from pipeline.tokenizer import BOS_ID, SPECIALS
from train.export import load

sample = load_script("sample")
SEP = "\n" + sample.SEPARATOR + "\n"


@pytest.fixture
def run(run_dir, capsys, monkeypatch):
    """run(*args) -> (exit code, stdout, stderr) of bin/sample.py on the fixture checkpoint."""
    monkeypatch.setattr("sys.stdin", io.StringIO(""))  # not a terminal, empty: never blocks

    def go(*args: str, checkpoint=run_dir) -> tuple[int, str, str]:
        code = sample.main(["--checkpoint", str(checkpoint), "--device", "cpu", *args])
        out, err = capsys.readouterr()
        return code, out, err

    return go


def greedy(run_dir, prompt: str, n: int) -> str:
    """The greedy continuation computed here with plain full forwards: no cache, no generate()."""
    loaded = load(run_dir)
    enc = Encoder(loaded.tokenizer_path)
    ids = [BOS_ID, *enc.encode(prompt)]
    new = []
    with torch.no_grad():
        for _ in range(n):
            logits, _ = loaded.model(torch.tensor([ids]))
            nxt = int(logits[0, -1].argmax())
            if nxt in (BOS_ID, SPECIALS.index("[SEP]")):
                break
            ids.append(nxt)
            new.append(nxt)
    return enc.decode(new)


def test_seed_example_prints_most_likely_next_token(run, run_dir):
    code, out, err = run("--prompt", "the dog is feeling ", "--max-new-tokens", "1", "--temperature", "0")
    assert code == 0
    assert out == "the dog is feeling " + greedy(run_dir, "the dog is feeling ", 1) + "\n"
    assert "tokens/s" in err and "tokens/s" not in out


def test_greedy_kv_cache_equals_no_cache_and_reference(run, run_dir):
    args = ("--prompt", "ROMEO:", "--max-new-tokens", "20", "--temperature", "0")
    _, cached, _ = run(*args)
    _, plain, err = run(*args, "--no-kv-cache")
    assert cached == plain == "ROMEO:" + greedy(run_dir, "ROMEO:", 20) + "\n"
    assert "no KV cache" in err


def test_seed_repeats_a_multinomial_sample(run):
    args = ("--prompt", "JULIET:", "--max-new-tokens", "30", "--temperature", "1.5", "--num-samples", "3")
    first, second, other = run(*args, "--seed", "3")[1], run(*args, "--seed", "3")[1], run(*args, "--seed", "4")[1]
    assert first == second
    assert first != other
    _, _, err = run(*args)
    assert "seed " in err  # an unseeded run prints the seed it drew, so it can be repeated


def test_num_samples_and_batch_of_prompts(run):
    _, out, err = run("--prompt", "ROMEO:", "--prompt", "the dog", "--num-samples", "2", "--max-new-tokens", "5",
                      "--seed", "0")
    parts = out.rstrip("\n").split(SEP)
    assert len(parts) == 4
    assert [p.split(":")[0] if p.startswith("ROMEO") else p[:7] for p in parts] == ["ROMEO", "ROMEO", "the dog",
                                                                                    "the dog"]
    assert "batch 4" in err


def test_batch_equals_each_prompt_alone(run):
    prompts = ["ROMEO: But soft, what light", "the", "To be, or not to be, that is the question"]
    batch = run(*sum((["--prompt", p] for p in prompts), []), "--temperature", "0", "--max-new-tokens", "12")[1]
    alone = [run("--prompt", p, "--temperature", "0", "--max-new-tokens", "12")[1].rstrip("\n") for p in prompts]
    assert batch.rstrip("\n").split(SEP) == alone


def test_stream_prints_the_same_text(run):
    args = ("--prompt", "ROMEO:", "--max-new-tokens", "25", "--temperature", "0", "--num-samples", "2")
    assert run(*args, "--stream")[1] == run(*args)[1]


def test_a_seeded_sample_is_the_same_alone_batched_or_streamed(run):
    """Sample i draws from seed + i: with one generator for the batch, --stream and a prompt alone each
    gave other text than the batch for the same --seed (a reviewer's find)."""
    args = ("--max-new-tokens", "20", "--temperature", "1.5")
    batch = run("--prompt", "ROMEO:", "--prompt", "the dog", "--num-samples", "2", "--seed", "7", *args)[1]
    samples = batch.rstrip("\n").split(SEP)
    assert run("--prompt", "ROMEO:", "--prompt", "the dog", "--num-samples", "2", "--seed", "7", "--stream",
               *args)[1] == batch
    assert run("--prompt", "ROMEO:", "--seed", "7", *args)[1].rstrip("\n") == samples[0]
    assert run("--prompt", "the dog", "--seed", "9", *args)[1].rstrip("\n") == samples[2]
    assert samples[0] != samples[1]  # two samples of one prompt differ


def test_prompt_from_stdin_and_file(run, tmp_path, monkeypatch):
    args = ("--max-new-tokens", "8", "--temperature", "0")
    expected = run("--prompt", "JULIET: O Romeo", *args)[1]
    (tmp_path / "p.txt").write_text("JULIET: O Romeo")
    assert run("--prompt-file", str(tmp_path / "p.txt"), *args)[1] == expected
    monkeypatch.setattr("sys.stdin", io.StringIO("JULIET: O Romeo"))
    assert run(*args)[1] == expected
    monkeypatch.setattr("sys.stdin", io.StringIO("JULIET: O Romeo"))
    assert run("--prompt-file", "-", *args)[1] == expected
    code, _, err = run("--prompt-file", str(tmp_path / "missing.txt"))
    assert code == 2 and "cannot read prompt" in err


def test_prompts_take_the_training_texts_line_ends_and_nfc(run):
    """A CRLF prompt (stdin keeps it) fed a CR token the model never saw in its LF-only training text, and
    a decomposed accent other ids than the composed one the store holds. A trailing space stays."""
    args = ("--max-new-tokens", "8", "--temperature", "0")
    expected = run("--prompt", "JULIET:\nO Rome\u00e9 ", *args)[1]
    assert run("--prompt", "JULIET:\r\nO Romee\u0301 ", *args)[1] == expected
    assert run("--prompt", "JULIET:\rO Rome\u00e9", *args)[1] != expected  # the space is meant


def test_no_prompt_starts_from_bos(run, run_dir):
    assert run("--max-new-tokens", "6", "--temperature", "0")[1] == greedy(run_dir, "", 6) + "\n"


def test_stop_strings(run):
    args = ("--prompt", "ROMEO:", "--max-new-tokens", "30", "--temperature", "0")
    full = run(*args)[1].rstrip("\n")[len("ROMEO:"):]
    assert "yonder window" in full and "Romeo" in full  # the fixture model has learned its text
    for stops in (["yonder window"], ["Romeo", "yonder window"], ["light", "nowhere"]):
        cut = min(full.index(s) for s in stops if s in full)
        for extra in ((), ("--stream",)):
            stop_args = sum((["--stop", s] for s in stops), [])
            assert run(*args, *stop_args, *extra)[1] == "ROMEO:" + full[:cut] + "\n"
    # Escapes: "\n" on the command line is a newline.
    assert sample._unescape("a\\nb\\tc\\\\n") == "a\nb\tc\\n"


def test_default_stop_ids_are_bos_and_sep(run, monkeypatch):
    seen = {}
    real = sample.complete

    def spy(*args, **kw):
        seen.update(kw)
        return real(*args, **kw)

    monkeypatch.setattr(sample, "complete", spy)
    run("--prompt", "x", "--max-new-tokens", "1")
    assert set(seen["stop_ids"]) == {SPECIALS.index("[BOS]"), SPECIALS.index("[SEP]")}
    assert set(seen["banned_ids"]) == {SPECIALS.index(s) for s in ("[PAD]", "[UNK]", "[CLS]", "[MASK]")}
    assert seen["bos_id"] == BOS_ID


def test_pad_unk_cls_and_mask_are_never_printed(run, monkeypatch):
    """The sampler could pick [PAD], [UNK], [CLS] or [MASK] (an early checkpoint's argmax, a high temperature),
    and they print as their names. Here the model's logits favour all four by 1e4: the output is still
    exactly the unfavoured model's, greedy, sampled and streamed, as they are banned from every choice."""
    names = ("[PAD]", "[UNK]", "[CLS]", "[MASK]")
    cases = [("--prompt", "ROMEO:", "--max-new-tokens", "20", "--temperature", "0"),
             ("--prompt", "JULIET:", "--max-new-tokens", "30", "--temperature", "1.5", "--num-samples", "2",
              "--seed", "3"),
             ("--prompt", "the dog", "--max-new-tokens", "30", "--temperature", "3", "--seed", "1", "--stream")]
    plain = [run(*args)[1] for args in cases]
    real = sample.load

    def favouring(*args, **kwargs):
        loaded = real(*args, **kwargs)
        bias = torch.zeros(loaded.model.cfg.vocab_size)
        bias[[SPECIALS.index(n) for n in names]] = 1e4
        loaded.model.lm_head.register_forward_hook(lambda module, inputs, out: out + bias)
        return loaded

    monkeypatch.setattr(sample, "load", favouring)
    for args, expected in zip(cases, plain, strict=True):
        code, out, _ = run(*args)
        assert code == 0 and not [n for n in names if n in out], out
        assert out == expected


def test_top_k_one_is_greedy_and_top_p_runs(run):
    greedy_out = run("--prompt", "the dog", "--max-new-tokens", "10", "--temperature", "0")[1]
    assert run("--prompt", "the dog", "--max-new-tokens", "10", "--top-k", "1", "--seed", "5")[1] == greedy_out
    assert run("--prompt", "the dog", "--max-new-tokens", "10", "--top-p", "1e-6", "--seed", "5")[1] == greedy_out
    code, out, _ = run("--prompt", "the dog", "--max-new-tokens", "10", "--top-k", "5", "--top-p", "0.9")
    assert code == 0 and out.startswith("the dog")


def test_long_prompt_keeps_its_last_block_size_tokens(run, run_dir):
    enc = Encoder(run_dir / "tokenizer.json")
    long_prompt = " ".join(["ROMEO: But soft, what light"] * 20)
    ids = [BOS_ID, *enc.encode(long_prompt)]
    assert len(ids) > 32
    tail = enc.decode(ids[-32:])
    assert enc.encode(tail) == ids[-32:]  # the tail round-trips, so it is a fair comparison
    _, out_long, err = run("--prompt", long_prompt, "--max-new-tokens", "40", "--temperature", "0")
    assert f"note: prompt 1 is {len(ids)} tokens with its [BOS]; the model sees the last 32 (its block_size)" in err
    assert "note:" not in run("--prompt", "ROMEO:", "--max-new-tokens", "1")[2]
    cont = out_long[len(long_prompt):]
    # The tail alone (no [BOS] in front) must give the same continuation as the long prompt.
    loaded = load(run_dir)
    new = generate(loaded.model, [ids[-32:]], 40, temperature=0, stop_ids=(BOS_ID, 3))[0]
    assert cont == enc.decode(new) + "\n"


@pytest.mark.parametrize("bad", [["--temperature", "-1"], ["--top-k", "0"], ["--top-p", "0"], ["--top-p", "1.5"],
                                 ["--num-samples", "0"],
                                 ["--max-new-tokens", "-1"], ["--seed", "x"], ["--seed", "-1"], ["--bogus"]])
def test_bad_arguments_exit_2(run, bad):
    with pytest.raises(SystemExit) as exc:
        run(*bad)
    assert exc.value.code == 2


def test_bad_values_name_the_option_and_type_and_a_bad_device_is_one_line(run, capsys):
    """`--max-new-tokens abc` said `invalid parse value`, `--seed -1` sampled with seed 18446744073709551615
    and `--device tpu` ended in torch's RuntimeError traceback."""
    for option, want in [("--max-new-tokens", "an integer >= 0"), ("--temperature", "a number >= 0"),
                         ("--top-k", "an integer >= 1")]:
        with pytest.raises(SystemExit):
            run(option, "abc")
        assert f"argument {option}: expected {want}, got 'abc'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run("--seed", "-1")
    assert "argument --seed: expected an integer >= 0" in capsys.readouterr().err
    code, out, err = run("--prompt", "x", "--device", "tpu")
    assert (code, out, err) == (2, "", "error: --device tpu: not a device name (cpu, cuda, cuda:1, mps, ...)\n")


def test_argument_defaults():
    args = sample.build_parser().parse_args([])
    assert args.checkpoint == "runs/tiny" and args.device == "auto" and args.temperature == 0.8
    assert not (args.no_kv_cache or args.stream or args.compile) and args.num_samples == 1 and args.stop == []


def test_default_checkpoint_is_runs_tiny(run_dir, tmp_path, monkeypatch, capsys):
    (tmp_path / "runs").mkdir()
    shutil.copytree(run_dir, tmp_path / "runs" / "tiny")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert sample.main(["--prompt", "x", "--max-new-tokens", "2", "--device", "cpu"]) == 0
    assert "runs/tiny/ckpt-00000007" in capsys.readouterr().err


def test_tokenizer_mismatch_is_refused(run, run_dir, tmp_path):
    other = tmp_path / "run"
    shutil.copytree(run_dir, other)
    (other / "tokenizer.json").write_text((run_dir / "tokenizer.json").read_text() + " ")
    code, out, err = run("--prompt", "x", checkpoint=other)
    assert code == 1 and out == ""
    assert "sha256" in err and "--tokenizer" in err
    # --tokenizer with the right file fixes it; with a wrong one it is refused too.
    assert run("--prompt", "x", "--max-new-tokens", "1", "--tokenizer", str(run_dir / "tokenizer.json"),
               checkpoint=other)[0] == 0
    assert run("--prompt", "x", "--tokenizer", str(other / "tokenizer.json"))[0] == 1


def test_missing_checkpoint(run, tmp_path):
    """A path that does not exist said "no complete checkpoint", as if it were a run cut off early."""
    code, _, err = run("--prompt", "x", checkpoint=tmp_path / "nothing")
    assert code == 1 and "nothing: does not exist (expected a run directory" in err and "make train" in err
    (tmp_path / "empty").mkdir()
    code, _, err = run("--prompt", "x", checkpoint=tmp_path / "empty")
    assert code == 1 and "no complete checkpoint" in err


def test_compile_flag_compiles_the_model(run, monkeypatch):
    calls = []
    monkeypatch.setattr(torch, "compile", lambda model, **kw: calls.append(kw) or model)
    args = ("--prompt", "ROMEO:", "--max-new-tokens", "5", "--temperature", "0")
    assert run(*args, "--compile")[1] == run(*args)[1]
    assert calls == [{"dynamic": True}]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_device_without_cuda_is_a_clear_error(run):
    code, out, err = run("--prompt", "x", "--device", "cuda")
    assert code == 2 and out == "" and "sees no CUDA device" in err


def test_tokenizer_option_serves_a_lone_checkpoint(run, run_dir, tmp_path):
    """A checkpoint directory copied alone (no run tokenizer.json, its store gone) loads with --tokenizer."""
    lone = tmp_path / "lone" / next(run_dir.glob("ckpt-*")).name
    shutil.copytree(next(run_dir.glob("ckpt-*")), lone)
    state = torch.load(lone / "state.pt", weights_only=True)
    state["config"] = {"data": str(tmp_path / "gone")}
    torch.save(state, lone / "state.pt")
    code, _, err = run("--prompt", "x", checkpoint=lone)
    assert code == 1 and "pass --tokenizer" in err
    code, _, err = run("--prompt", "x", "--max-new-tokens", "1", "--tokenizer", str(run_dir / "tokenizer.json"),
                       checkpoint=lone)
    assert code == 0, err


def test_prompt_that_is_not_utf8_is_a_clear_error(run, tmp_path, monkeypatch):
    (tmp_path / "latin1.txt").write_bytes("Roméo".encode("latin-1"))
    code, _, err = run("--prompt-file", str(tmp_path / "latin1.txt"))
    assert code == 2 and f"{tmp_path / 'latin1.txt'}: not UTF-8" in err
    # stdin as a real (byte-backed) text stream, decoded strictly whatever the locale.
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO("Roméo".encode("latin-1")), encoding="utf-8"))
    code, _, err = run()
    assert code == 2 and "standard input: not UTF-8" in err


def test_no_kv_cache_reaches_generate_and_an_unseeded_run_draws_a_fresh_seed(run, monkeypatch):
    """--no-kv-cache must switch the cache off in generate() (greedy output is the same either way, and the
    speed line only echoes the flag), and runs without --seed must differ, each printing the seed that
    repeats it. Mutations passing use_kv_cache=True always, or seeding every run with 0, passed every test."""
    import model.generate as gen

    seen = []
    real = gen.generate
    monkeypatch.setattr(gen, "generate", lambda *a, **kw: seen.append(kw["use_kv_cache"]) or real(*a, **kw))
    run("--prompt", "ROMEO:", "--max-new-tokens", "2", "--temperature", "0", "--no-kv-cache")
    run("--prompt", "ROMEO:", "--max-new-tokens", "2", "--temperature", "0")
    assert seen == [False, True]
    args = ("--prompt", "JULIET:", "--max-new-tokens", "30", "--temperature", "1.5")
    (_, first, err1), (_, second, err2) = run(*args), run(*args)
    seed1 = err1.split("seed ")[1].split()[0]
    assert seed1 != err2.split("seed ")[1].split()[0] and first != second
    assert run(*args, "--seed", seed1)[1] == first


def test_dtype_auto_is_float32_on_the_cpu_and_the_speed_line_names_it(run, monkeypatch):
    seen = []
    real = sample.complete
    monkeypatch.setattr(sample, "complete", lambda *a, **kw: seen.append(kw["dtype"]) or real(*a, **kw))
    assert sample.build_parser().parse_args([]).dtype == "auto"
    code, _, err = run("--prompt", "x", "--max-new-tokens", "2")
    assert code == 0 and err.rstrip("\n").endswith("(KV cache, batch 1, float32)")
    code, _, err = run("--prompt", "x", "--max-new-tokens", "2", "--dtype", "bfloat16", "--no-kv-cache")
    assert code == 0 and err.rstrip("\n").endswith("(no KV cache, batch 1, bfloat16)")
    assert seen == ["float32", "bfloat16"]


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_an_explicit_half_dtype_runs_on_the_cpu_and_a_seed_repeats_its_sample(run, dtype):
    """CPU autocast takes both; a seeded sample repeats in them exactly, as in float32."""
    args = ("--prompt", "JULIET:", "--max-new-tokens", "30", "--temperature", "1.5", "--num-samples", "2",
            "--dtype", dtype)
    first, second, other = run(*args, "--seed", "3"), run(*args, "--seed", "3"), run(*args, "--seed", "4")
    assert first[0] == 0 and f"{dtype})" in first[2]
    assert first[1] == second[1] != other[1]
    code, out, _ = run("--prompt", "ROMEO:", "--max-new-tokens", "12", "--temperature", "0", "--dtype", dtype)
    assert code == 0 and out.startswith("ROMEO: But soft")  # the fitted text, in half precision too


def test_an_unknown_dtype_is_refused(run, capsys):
    with pytest.raises(SystemExit) as exc:
        run("--dtype", "int8")
    assert exc.value.code == 2 and "argument --dtype: invalid choice: 'int8'" in capsys.readouterr().err


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_greedy_matches_the_cpu_cached_uncached_and_compiled(run):
    """bin/sample.py on a GPU in float32 without TF32 writes the CPU's greedy text, also with
    --compile (dynamic shapes over a growing cache), and a seeded sample on the GPU repeats."""
    args = ("--prompt", "ROMEO:", "--max-new-tokens", "20", "--temperature", "0", "--dtype", "float32")
    on_cpu = run(*args)[1]
    code, on_gpu, err = run(*args, "--device", "cuda")
    assert code == 0 and "on cuda" in err and on_gpu == on_cpu
    assert run(*args, "--device", "cuda", "--no-kv-cache")[1] == on_cpu
    # Dynamo keeps at most 8 compiled versions of GPT.forward per process, earlier tests' included,
    # and runs the rest uncompiled with only a warning: start afresh and check that it compiled.
    torch._dynamo.reset()
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    assert run(*args, "--device", "cuda", "--compile")[1] == on_cpu
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > graphs
    seeded = ("--prompt", "JULIET:", "--max-new-tokens", "30", "--temperature", "1.5", "--device", "cuda",
              "--dtype", "float32")
    assert run(*seeded, "--seed", "3")[1] == run(*seeded, "--seed", "3")[1] != run(*seeded, "--seed", "4")[1]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_defaults_to_bf16_autocast_and_a_seed_repeats(run):
    """On a GPU `auto` is bfloat16 (float16 on a card without native bf16): the speed line says which,
    greedy output is still the fitted text, and a seeded sample repeats."""
    want = "bfloat16" if torch.cuda.get_device_capability()[0] >= 8 else "float16"
    code, out, err = run("--prompt", "ROMEO:", "--max-new-tokens", "12", "--temperature", "0", "--device", "cuda")
    assert code == 0 and err.rstrip("\n").endswith(f"(KV cache, batch 1, {want})")
    assert out.startswith("ROMEO: But soft")
    seeded = ("--prompt", "JULIET:", "--max-new-tokens", "30", "--temperature", "1.5", "--device", "cuda")
    assert run(*seeded, "--seed", "3")[1] == run(*seeded, "--seed", "3")[1] != run(*seeded, "--seed", "4")[1]


@pytest.mark.parametrize("stream", [[], ["--stream"]])
def test_ctrl_c_is_one_line_and_exit_130(run, monkeypatch, stream):
    """Ctrl-C during generation printed a KeyboardInterrupt traceback from inside the model."""
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(sample, "complete", interrupted)
    code, _, err = run("--prompt", "a", *stream)
    assert code == 130 and err.endswith("\ninterrupted\n") and "Traceback" not in err

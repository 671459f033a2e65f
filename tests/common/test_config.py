import re
from dataclasses import dataclass, field

import pytest

from common.config import ConfigError, field_docs, from_dict, load_yaml, parse_cli


@dataclass
class Inner:
    n_layer: int = 2
    """Number of blocks."""
    act: str = "gelu"
    flag: bool = False


@dataclass
class Outer:
    lr: float = 1e-3
    """Peak learning rate."""
    data: str | None = None
    paths: list[str] = field(default_factory=list)
    model: Inner = field(default_factory=Inner)


def test_precedence_defaults_yaml_cli(tmp_path):
    cfg_file = tmp_path / "c.yml"
    cfg_file.write_text("lr: 0.5\nmodel:\n  n_layer: 6\n  act: relu\n")
    cfg = parse_cli(Outer, ["--config", str(cfg_file), "model.n_layer=8", "--paths", "a b"])
    assert cfg.lr == 0.5 and cfg.model.n_layer == 8 and cfg.model.act == "relu"
    assert cfg.paths == ["a", "b"]


def test_flag_forms():
    cfg = parse_cli(Outer, ["--model.flag", "--lr=2", "data=none"])
    assert cfg.model.flag is True and cfg.lr == 2.0 and cfg.data is None
    assert parse_cli(Outer, ["--model.flag", "--model.no-flag"]).model.flag is False


@pytest.mark.parametrize("argv", [["lr=abc"], ["nope=1"], ["model.nope=1"], ["--lr"], ["stray"]])
def test_bad_options_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        parse_cli(Outer, argv)
    assert exc.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_unknown_yaml_key_names_file(tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text("lr: 1\nmodle: {}\n")
    with pytest.raises(ConfigError, match="bad.yml.*modle"):
        from_dict(Outer, {"lr": 1, "modle": {}}, where=str(bad))


def test_help_lists_docs(capsys):
    with pytest.raises(SystemExit):
        parse_cli(Outer, ["--help"], prog="x")
    out = capsys.readouterr().out
    assert "Peak learning rate." in out and "--model.n-layer" in out
    assert field_docs(Inner)["n_layer"] == "Number of blocks."


@dataclass
class Optional_:
    limit: int | None = 3


def test_none_for_optional_int():
    assert parse_cli(Optional_, ["limit=none"]).limit is None
    assert parse_cli(Optional_, ["--limit", "7"]).limit == 7


@pytest.mark.parametrize(("cls", "argv", "message"), [
    (Optional_, ["limit="], "'limit=': no value given (write null for none)\n"),
    (Optional_, ["--limit", ""], "'--limit': no value given (write null for none)\n"),
    (Outer, ["lr="], "'lr=': no value given\n"),
])
def test_an_empty_value_is_refused_not_read_as_null(cls, argv, message, capsys):
    """YAML reads "" as null: `limit=` (a half-typed value) switched an optional setting off silently."""
    with pytest.raises(SystemExit):
        parse_cli(cls, argv)
    assert capsys.readouterr().err.endswith(message)
    assert parse_cli(Outer, ["data=", "paths="]).data == ""  # text takes "" as it is


@dataclass
class Flags:
    compile: bool | str = "auto"
    init_batch: bool = True
    align_bos: bool = False
    lr: float = 1.0


def _error(capsys, cls, argv) -> str:
    with pytest.raises(SystemExit) as exc:
        parse_cli(cls, argv)
    assert exc.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("lr: abc\n", "bad.yml: lr: expected float, got 'abc'"),
        ("model: {n_layr: 2}\n", "bad.yml: model.n_layr: unknown key for Inner (did you mean model.n_layer?)"),
        ("model: {flag: maybe}\n", "bad.yml: model.flag: expected true/false, got 'maybe'"),
        ("paths: [a, [b]]\n", "bad.yml: paths[1]: expected str"),
        ("model: 3\n", "bad.yml: model: expected a mapping, got 3"),
    ],
)
def test_yaml_errors_name_file_and_key_path(tmp_path, capsys, text, expected):
    bad = tmp_path / "bad.yml"
    bad.write_text(text)
    assert expected in _error(capsys, Outer, ["--config", str(bad)])


def test_cli_errors_still_say_command_line(tmp_path, capsys):
    good = tmp_path / "good.yml"
    good.write_text("lr: 0.5\n")
    assert "command line: lr: expected float, got 'abc'" in _error(capsys, Outer, ["--config", str(good), "lr=abc"])


@pytest.mark.parametrize(
    ("arg", "hint"),
    [("--model.n-layr", "--model.n-layer"), ("--model.n_layr", "--model.n-layer"), ("model.n_layr=3", "model.n_layer"),
     ("--lrr", "--lr"), ("lrr=1", "lr")],
)
def test_an_unknown_option_is_told_the_close_one_as_it_would_be_typed(capsys, arg, hint):
    """`--model.nlayer` was told "did you mean n_layer?": pasted back, that is itself an unknown option."""
    argv = [arg, "3"] if "=" not in arg else [arg]
    assert f"unknown option {arg!r} for {'Inner' if 'model' in arg else 'Outer'} (did you mean {hint}?)" in _error(
        capsys, Outer, argv)


def test_a_second_config_file_is_an_error_not_a_replacement(tmp_path, capsys):
    """The second --config silently replaced the first, dropping every key it set (out_dir too)."""
    for name in ("a", "b"):
        (tmp_path / f"{name}.yml").write_text("lr: 0.5\n")
    err = _error(capsys, Outer, ["--config", str(tmp_path / "a.yml"), f"--config={tmp_path / 'b.yml'}"])
    assert f"command line: one --config at a time (got {tmp_path / 'a.yml'} and {tmp_path / 'b.yml'})" in err


@dataclass
class Checked:
    n: int = 1

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"Checked.n must be >= 1, got {self.n}")


@dataclass
class HoldsChecked:
    sub: Checked = field(default_factory=Checked)


def test_dataclass_own_checks_name_file_and_section(tmp_path, capsys):
    bad = tmp_path / "bad.yml"
    bad.write_text("sub: {n: 0}\n")
    assert "bad.yml: sub: Checked.n must be >= 1, got 0" in _error(capsys, HoldsChecked, ["--config", str(bad)])


def test_unreadable_config_is_a_config_error(tmp_path, capsys):
    # A directory stands for every OSError (reading one fails even as root, unlike a chmod 000 file).
    err = _error(capsys, Outer, ["--config", str(tmp_path)])
    assert f"{tmp_path}: cannot read config file" in err and "Traceback" not in err
    binary = tmp_path / "bin.yml"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError, match="bin.yml: not a UTF-8 text file"):
        load_yaml(binary)


def test_invalid_yaml_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text("lr: 1\npaths: [a, b\nmodel: {}\n")
    with pytest.raises(ConfigError, match=r"bad\.yml:3:\d+: not valid YAML: .*flow sequence at line 2"):
        load_yaml(bad)


def test_a_key_given_twice_is_refused_with_both_lines(tmp_path):
    """PyYAML keeps the last one silently: of two `n_layer:` lines, the lower one won without a word."""
    bad = tmp_path / "bad.yml"
    bad.write_text("lr: 1\nmodel:\n  n_layer: 2\n  act: relu\n  n_layer: 3\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(bad))}:5:3: not valid YAML: duplicate key 'n_layer' "
                                          r"\(first at line 3\); keep one$"):
        load_yaml(bad)
    # A merge key (`<<: *base`) is no duplicate, and the keys after it override the merged ones.
    bad.write_text("base: &base {n_layer: 2, act: relu}\nmodel:\n  <<: *base\n  n_layer: 4\n")
    assert load_yaml(bad)["model"] == {"n_layer": 4, "act": "relu"}


def test_yaml_ints_0_1_are_booleans(tmp_path):
    cfg_file = tmp_path / "c.yml"
    cfg_file.write_text("init_batch: 0\nalign_bos: 1\ncompile: 0\n")
    cfg = parse_cli(Flags, ["--config", str(cfg_file)])
    assert (cfg.init_batch, cfg.align_bos, cfg.compile) == (False, True, False)
    cfg = parse_cli(Flags, ["init_batch=0", "align_bos=1", "compile=1"])
    assert (cfg.init_batch, cfg.align_bos, cfg.compile) == (False, True, True)
    with pytest.raises(ConfigError, match="align_bos: expected true/false, got 2"):
        from_dict(Flags, {"align_bos": 2})


@pytest.mark.parametrize(
    ("argv", "compile_", "lr"),
    [
        (["--compile", "--lr", "2"], True, 2.0),  # a bare flag leaves the next option alone
        (["--compile", "lr=2"], True, 2.0),
        (["--lr", "2", "--compile"], True, 2.0),
        (["--no-compile"], False, 1.0),
        (["--compile", "auto"], "auto", 1.0),  # the --key value form still works
        (["--compile", "false"], False, 1.0),
        (["compile=auto"], "auto", 1.0),
        (["--compile=true"], True, 1.0),
    ],
)
def test_bool_or_str_field_as_flag(argv, compile_, lr):
    cfg = parse_cli(Flags, argv)
    assert cfg.compile == compile_ and type(cfg.compile) is type(compile_) and cfg.lr == lr


def test_bool_flag_forms(capsys):
    cfg = parse_cli(Flags, ["--no-init-batch", "--align-bos", "true"])
    assert cfg.init_batch is False and cfg.align_bos is True
    assert "takes no value" in _error(capsys, Flags, ["--no-init-batch=1"])


def test_a_list_option_given_twice_takes_both_and_items_can_be_quoted():
    """`--data a --data b` kept only b (and make's DATA plus ARGS="--data ..." lost DATA), silently; a
    path with a space could not be given at all."""
    cfg = parse_cli(Outer, ["--paths", "a b", "--paths", "c", "paths=d"])
    assert cfg.paths == ["a", "b", "c", "d"]
    assert parse_cli(Outer, ["--paths", "'my data/x.jsonl' y"]).paths == ["my data/x.jsonl", "y"]
    assert parse_cli(Outer, ["--paths", "'my data/x.jsonl'"]).paths == ["my data/x.jsonl"]  # one quoted item
    assert parse_cli(Outer, ["paths=\"my data/x.jsonl\" z"]).paths == ["my data/x.jsonl", "z"]
    assert parse_cli(Outer, ["--paths", "O'Brien.jsonl b"]).paths == ["O'Brien.jsonl", "b"]  # not a quote
    assert parse_cli(Outer, ["--paths", r"C:\corpus\a.jsonl"]).paths == [r"C:\corpus\a.jsonl"]
    assert parse_cli(Outer, ["--paths", "[a, b]"]).paths == ["a", "b"]  # a YAML list still works
    # A scalar given twice: the last one wins, as with argparse.
    assert parse_cli(Outer, ["lr=1", "lr=2"]).lr == 2.0


def test_an_unknown_key_without_a_close_match_lists_the_known_ones():
    with pytest.raises(ConfigError, match=r"zzz: unknown key for Inner; known: n_layer, act, flag"):
        from_dict(Outer, {"model": {"zzz": 1}})


def test_a_list_value_naming_an_existing_path_whole_is_one_path(tmp_path, monkeypatch):
    """`bin/prepare.py --data "my data/a.jsonl"`: the shell had split the words already, and the
    value was split again into `my` and `data/a.jsonl` ("my: no such file or folder")."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my data").mkdir()
    (tmp_path / "my data" / "a.jsonl").write_text("{}\n")
    assert parse_cli(Outer, ["--paths", "my data/a.jsonl"]).paths == ["my data/a.jsonl"]
    assert parse_cli(Outer, ["--paths", "my data"]).paths == ["my data"]
    assert parse_cli(Outer, ["--paths", "my data/*.jsonl"]).paths == ["my data/*.jsonl"]  # a glob that matches
    # Make's DATA="a b" still means two paths when no path is named by the whole.
    assert parse_cli(Outer, ["--paths", "my data/b.jsonl c"]).paths == ["my", "data/b.jsonl", "c"]


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"lr": True}, "lr: expected float, got True"),  # a bool is an int to Python, not a number here
        ({"model": {"n_layer": True}}, "model.n_layer: expected int, got True"),
        ({"data": 3}, None),  # a number where a str | None goes: "3", below
        ({"model": {"act": None}}, "model.act: expected str, got None"),
    ],
)
def test_bools_are_not_numbers_and_none_only_fills_optional_fields(values, expected):
    if expected is None:
        assert from_dict(Outer, values).data == "3"
        return
    with pytest.raises(ConfigError, match=f"^config: {re.escape(expected)}$"):
        from_dict(Outer, values)


def test_none_where_a_union_has_no_none_is_an_error():
    with pytest.raises(ConfigError, match="compile"):
        from_dict(Flags, {"compile": None})


def test_yaml_numbers_pyyaml_reads_as_strings_still_convert(tmp_path):
    """PyYAML reads `1e-3` (no dot) as the string '1e-3', a natural way to write a learning rate."""
    cfg_file = tmp_path / "c.yml"
    cfg_file.write_text("lr: 1e-3\nmodel:\n  n_layer: '4'\n")
    cfg = parse_cli(Outer, ["--config", str(cfg_file)])
    assert cfg.lr == 0.001 and cfg.model.n_layer == 4
    assert parse_cli(Outer, ["lr=5e-4"]).lr == 0.0005


def test_an_empty_config_file_means_the_defaults(tmp_path):
    cfg_file = tmp_path / "empty.yml"
    cfg_file.write_text("# nothing set yet\n")
    assert parse_cli(Outer, ["--config", str(cfg_file)]) == Outer()


def test_none_on_the_command_line_is_the_word_for_a_plain_str_field():
    assert parse_cli(Outer, ["model.act=none"]).model.act == "none"
    assert parse_cli(Outer, ["data=null"]).data is None and parse_cli(Outer, ["data=None"]).data is None


def test_a_str_or_none_field_takes_command_line_text_verbatim():
    """Through YAML, `007` would become 7 and `on` True (then refused): a folder may be named either."""
    assert [parse_cli(Outer, [f"data={text}"]).data for text in ("007", "on", "1e3")] == ["007", "on", "1e3"]


@dataclass
class Documented:
    size: int = 1
    """A docstring that
    goes on for two lines."""


def test_field_docs_are_one_line_each():
    assert field_docs(Documented) == {"size": "A docstring that goes on for two lines."}


def test_several_unknown_keys_are_all_named_and_the_known_ones_listed():
    with pytest.raises(ConfigError, match=r"^config: model\.actt, model\.n_layr: unknown keys for Inner; "
                                          r"known: n_layer, act, flag$"):
        from_dict(Outer, {"model": {"n_layr": 1, "actt": "x"}})


def test_unknown_keys_in_several_sections_are_named_in_one_message():
    """Only the first section's were: a config with a typo in each took one rerun per typo."""
    with pytest.raises(ConfigError, match=r"^config: lrr: unknown key for Outer \(did you mean lr\?\); model\.n_layr: "
                                          r"unknown key for Inner \(did you mean model\.n_layer\?\)$"):
        from_dict(Outer, {"lrr": 1, "model": {"n_layr": 1}})


def test_a_dotted_key_through_a_non_section_is_a_config_error(capsys):
    assert "command line: 'lr' is not a config section of Outer" in _error(capsys, Outer, ["lr.x=1"])


@dataclass
class MaybeInner:
    model: Inner | None = None


def test_unknown_keys_anywhere_are_named_before_any_value_is_converted():
    """The walk for unknown keys covers every nested section once, before the build; a section behind
    a union (`Inner | None`) is not on that walk, and is checked when the union tries it."""
    with pytest.raises(ConfigError, match=r"^config: model\.n_layr: unknown key for Inner \(did you mean model\.n_la"):
        from_dict(Outer, {"lr": "abc", "model": {"n_layr": 1}})
    with pytest.raises(ConfigError, match=r"^config: model\.n_layr: unknown key for Inner \(did you mean model\.n_la"):
        from_dict(MaybeInner, {"model": {"n_layr": 1}})
    assert from_dict(MaybeInner, {"model": {"n_layer": 3}}).model == Inner(n_layer=3)

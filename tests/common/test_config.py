from dataclasses import dataclass, field

import pytest

from common.config import ConfigError, field_docs, from_dict, parse_cli


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

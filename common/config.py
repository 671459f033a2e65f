"""Typed stage configs: a dataclass per stage, loaded from YAML and overridden from the command line.

Each stage declares its options once, as a dataclass whose fields carry attribute docstrings:

    @dataclass
    class TrainConfig:
        lr: float = 3e-4
        \"\"\"Peak learning rate.\"\"\"

`parse_cli(TrainConfig, argv)` then accepts, in this order of precedence (later wins):
defaults < `--config file.yml` < command-line overrides. Overrides may be written `key=value`,
`--key value`, `--key=value`, `--flag` / `--no-flag` for booleans; dashes and underscores are
interchangeable. Unknown keys and ill-typed values are errors that name the key, so a typo never
silently trains the wrong model.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import itertools
import sys
import textwrap
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override that does not fit the stage's dataclass."""


def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings of a dataclass, read from its source (the string right after a field)."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):
        return {}
    docs: dict[str, str] = {}
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    for node, nxt in itertools.pairwise(body):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
            and isinstance(nxt.value.value, str)
        ):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Convert `value` (from YAML or the command line) to the field type `tp`, or raise ConfigError."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(key, value, arg)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError("; ".join(errors))
    if origin in (list, tuple):
        if isinstance(value, str):
            value = value.split()
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        item = args[0] if args else Any
        return [_coerce(key, v, item) for v in value]
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return from_dict(tp, value, where=key)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            return value.lower() in ("1", "true", "yes", "on")
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if tp in (int, float, str) and isinstance(value, str) and tp is not str:
        try:
            return tp(value)
        except ValueError:
            raise ConfigError(f"{key}: expected {tp.__name__}, got {value!r}") from None
    if isinstance(tp, type) and not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise ConfigError(f"{key}: expected {getattr(tp, '__name__', tp)}, got {value!r}")
    return value


def fields_of(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def from_dict(cls: type[T], values: dict[str, Any], where: str = "config") -> T:
    """Build `cls` from a mapping; unknown keys are an error naming `where` (a file or 'command line')."""
    fields = fields_of(cls)
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)} for {cls.__name__}")
    out = {}
    for k, v in values.items():
        if dataclasses.is_dataclass(fields[k]) and isinstance(v, dict):
            v = _merge(to_dict(fields[k]()), v)
        out[k] = _coerce(k, v, fields[k])
    return cls(**out)


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict update: a nested section in `update` changes only the keys it names."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def load_yaml(path: str | Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def _parse_value(raw: str, tp: Any) -> Any:
    """Command-line text to a Python value: strings stay verbatim, everything else goes through YAML."""
    if raw.lower() in ("none", "null") and type(None) in typing.get_args(tp):
        return None
    if tp is str or (typing.get_origin(tp) in (typing.Union, types.UnionType) and str in typing.get_args(tp)):
        return raw
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def parse_overrides(cls: type, argv: list[str]) -> tuple[str | None, dict[str, Any]]:
    """Split argv into an optional `--config` path and a dict of overrides (still untyped)."""
    fields = fields_of(cls)
    config_path: str | None = None
    out: dict[str, Any] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg.startswith("--"):
            key, eq, raw = arg[2:].partition("=")
        elif "=" in arg:
            key, eq, raw = arg.partition("=")
        else:
            raise ConfigError(f"command line: cannot parse {arg!r}; use key=value or --key value")
        key = key.replace("-", "_")
        if "." in key:
            section, _, sub = key.partition(".")
            nested = fields.get(section)
            if not (isinstance(nested, type) and dataclasses.is_dataclass(nested)):
                raise ConfigError(f"command line: {section!r} is not a config section of {cls.__name__}")
            sub_fields = fields_of(nested)
            if not eq and bool not in (sub_fields.get(sub), sub_fields.get(sub.removeprefix("no_"))):
                if i >= len(argv):
                    raise ConfigError(f"command line: {arg} needs a value")
                raw, eq, i = argv[i], "=", i + 1
            _, sub_values = parse_overrides(nested, [f"{sub}={raw}" if eq else f"--{sub}"])
            out[section] = _merge(out.get(section, {}), sub_values)
            continue
        if key == "config":
            if not eq:
                if i >= len(argv):
                    raise ConfigError("command line: --config needs a path")
                raw, i = argv[i], i + 1
            config_path = raw
            continue
        negated = key.startswith("no_") and key[3:] in fields and fields[key[3:]] is bool
        if negated or (not eq and fields.get(key) is bool):
            out[key[3:] if negated else key] = not negated
            continue
        if key not in fields:
            raise ConfigError(f"command line: unknown option {arg!r} for {cls.__name__} (see --help)")
        if not eq:
            if i >= len(argv):
                raise ConfigError(f"command line: {arg} needs a value")
            raw, i = argv[i], i + 1
        out[key] = _parse_value(raw, fields[key])
    return config_path, out


def _option_lines(cls: type, prefix: str = "") -> list[str]:
    docs = field_docs(cls)
    defaults = cls()
    lines = []
    for name, tp in fields_of(cls).items():
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            lines += _option_lines(tp, f"{prefix}{name}.")
            continue
        tname = getattr(tp, "__name__", str(tp).replace("typing.", ""))
        lines.append(f"  --{prefix}{name.replace('_', '-')} ({tname}) [{getattr(defaults, name)!r}]")
        if name in docs:
            lines += ["      " + ln for ln in textwrap.wrap(docs[name], 90)]
    return lines


def help_text(cls: type, prog: str, description: str = "") -> str:
    lines = [f"usage: {prog} [--config FILE.yml] [key=value | --key value | --flag] ...", ""]
    if description:
        lines += [description.strip(), ""]
    lines.append("options (defaults in brackets; section.key for nested sections):")
    return "\n".join(lines + _option_lines(cls))


def parse_cli(cls: type[T], argv: list[str] | None = None, prog: str = "", description: str = "") -> T:
    """Defaults < YAML file < overrides. Prints help and exits on -h/--help; exits 2 on a bad option."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if "-h" in argv or "--help" in argv:
        print(help_text(cls, prog or Path(sys.argv[0]).name, description))
        raise SystemExit(0)
    try:
        config_path, overrides = parse_overrides(cls, argv)
        values = load_yaml(config_path) if config_path else {}
        base = from_dict(cls, values, where=config_path or "config")
        return from_dict(cls, _merge(to_dict(base), overrides), where="command line")
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None

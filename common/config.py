"""Typed stage configs: a dataclass per stage, loaded from YAML and overridden from the command line.

Each stage declares its options once, as a dataclass whose fields carry attribute docstrings:

    @dataclass
    class TrainConfig:
        lr: float = 3e-4
        \"\"\"Peak learning rate.\"\"\"

`parse_cli(TrainConfig, argv)` then accepts, in this order of precedence (later wins):
defaults < `--config file.yml` < command-line overrides. Overrides may be written `key=value`,
`--key value`, `--key=value`, `--flag` / `--no-flag` for booleans (also for fields like
`compile: bool | str`, where `--compile auto` still passes a value); dashes and underscores are
interchangeable. Unknown keys and ill-typed values are errors that name the source (the YAML file or
the command line) and the key path, so a typo never silently trains the wrong model.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import itertools
import sys
import textwrap
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from common.list_items import list_items

T = TypeVar("T")

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


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
    """Convert `value` (from YAML or the command line) to the field type `tp`, or raise ConfigError.

    `key` is the field's dotted path (`model.n_layer`), so that a message locates the value in its file."""
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
        value = list_items(value)
        item = args[0] if args else Any
        return [_coerce(f"{key}[{i}]", v, item) for i, v in enumerate(value)]
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        return _build(tp, value, prefix=f"{key}.")
    if tp is bool:
        if isinstance(value, bool):
            return value
        # YAML reads `init_batch: 0` (and the override init_batch=0) as an int, while the string "0" was
        # always a boolean here; both spellings must mean the same.
        if type(value) is int and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.lower() in _TRUE + _FALSE:
            return value.lower() in _TRUE
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


def _is_section(tp: Any) -> bool:
    """Whether a field of type `tp` is a nested section (`model: GPTConfig`): a mapping in YAML,
    dotted keys (`model.n_layer`) on the command line."""
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _sections(fields: dict[str, Any], values: dict[str, Any]) -> dict[Any, type]:
    """The keys of `values` that set a nested section by a mapping, with the section's dataclass: the
    walk down the tree that the unknown-key check and the build share."""
    return {k: fields[k] for k, v in values.items() if _is_section(fields.get(k)) and isinstance(v, dict)}


def _build(cls: type[T], values: Any, prefix: str = "", keys_checked: bool = False) -> T:
    """from_dict without the source label: messages carry the dotted key path (`prefix` + key) only.
    `keys_checked`: the unknown keys of `values` were already named, with those of the section above."""
    section = prefix.removesuffix(".")
    if not isinstance(values, dict):
        raise ConfigError(f"{section or 'top level'}: expected a mapping, got {values!r}")
    fields = fields_of(cls)
    if not keys_checked and (unknown := _unknown_keys(cls, values, prefix)):
        raise ConfigError("; ".join(unknown))
    sections, out = _sections(fields, values), {}
    for k, v in values.items():
        if k in sections:  # a mapping sets only the keys it names: the section's defaults fill the rest
            out[k] = _build(sections[k], _merge(to_dict(sections[k]()), v), f"{prefix}{k}.", keys_checked=True)
        else:
            out[k] = _coerce(f"{prefix}{k}", v, fields[k])
    try:
        return cls(**out)
    except ValueError as err:  # the dataclass's own checks (ConfigError or, as in GPTConfig, ValueError)
        raise ConfigError(f"{section}: {err}" if section else str(err)) from None


def _unknown_keys(cls: type, values: dict[str, Any], prefix: str) -> list[str]:
    """A message per section (nested ones too) naming the keys `cls` lacks there, so that a config
    with several typos is put right in one go rather than one rerun each."""
    fields = fields_of(cls)
    unknown = sorted((k for k in values if k not in fields), key=str)
    found = []
    if unknown:
        names = ", ".join(f"{prefix}{k}" for k in unknown)
        hint = difflib.get_close_matches(str(unknown[0]), fields, n=1) if len(unknown) == 1 else []
        found.append(f"{names}: unknown key{'s' if len(unknown) > 1 else ''} for {cls.__name__}"
                     + (f" (did you mean {prefix}{hint[0]}?)" if hint else f"; known: {', '.join(fields)}"))
    for k, nested in _sections(fields, values).items():
        found += _unknown_keys(nested, values[k], f"{prefix}{k}.")
    return found


def from_dict(cls: type[T], values: dict[str, Any], where: str = "config") -> T:
    """Build `cls` from a mapping. Every error names `where` (the YAML file, 'command line', ...) and
    the key path, e.g. `configs/tiny.yml: model.n_layr: unknown key for GPTConfig`."""
    try:
        return _build(cls, values)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None


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
    """A YAML file's top-level mapping; any failure to read or parse it is a ConfigError naming the file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except OSError as err:  # a directory, no permission, ...: an error message, not a traceback
        raise ConfigError(f"{path}: cannot read config file: {err.strerror or err}") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not a UTF-8 text file ({err.reason} at byte {err.start})") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader) or {}
    except yaml.YAMLError as err:
        raise ConfigError(_yaml_error(path, err)) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader refusing a key given twice in one mapping: PyYAML keeps the last one silently, so of
    two `lr:` lines in a config the lower one won without a word."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` may repeat, and its keys be overridden
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                seen = first.setdefault(key, key_node)
            except TypeError:  # an unhashable key: SafeLoader's own error says so
                continue
            if seen is not key_node:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first at line {seen.start_mark.line + 1}); keep one",
                    key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def _yaml_error(path: str | Path, err: yaml.YAMLError) -> str:
    """`file:line:col: not valid YAML: ...`; PyYAML's own text would name the file "<unicode string>"."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None)
    if mark is None or problem is None:
        return f"{path}: not valid YAML: {err}"
    context, ctx_mark = getattr(err, "context", None), getattr(err, "context_mark", None)
    where = f" ({context} at line {ctx_mark.line + 1})" if context and ctx_mark else f" ({context})" if context else ""
    return f"{path}:{mark.line + 1}:{mark.column + 1}: not valid YAML: {problem}{where}"


def parse_value(raw: str, tp: Any) -> Any:
    """Command-line text to a Python value of type `tp`: strings stay verbatim, everything else goes through
    YAML; an empty value for a non-text type is a ValueError (YAML would read it as null)."""
    if raw.lower() in ("none", "null") and type(None) in typing.get_args(tp):
        return None
    if _takes_text(tp):
        return raw
    if typing.get_origin(tp) in (list, tuple) and not raw.lstrip().startswith("["):
        return raw  # split by list_items; YAML would strip the quotes that group an item with spaces
    if not raw.strip():  # YAML reads it as null, which would quietly switch an optional setting off
        raise ValueError("no value given" + (" (write null for none)" if type(None) in typing.get_args(tp) else ""))
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def _takes_text(tp: Any) -> bool:
    return tp is str or (typing.get_origin(tp) in (typing.Union, types.UnionType) and str in typing.get_args(tp))


def _takes_bool(tp: Any) -> bool:
    """True for `bool` and unions holding it (`compile: bool | str`): these work as `--flag` / `--no-flag`."""
    return tp is bool or (typing.get_origin(tp) in (typing.Union, types.UnionType) and bool in typing.get_args(tp))


def _is_value_word(arg: str) -> bool:
    """Whether an argument after a bare `--flag` is its value. There are no positional arguments, so a
    word that is neither an option nor key=value can only be one (`--compile auto`, `--quiet false`)."""
    return not arg.startswith("-") and "=" not in arg


def _resolve(cls: type, key: str, arg: str) -> tuple[list[str], Any]:
    """A (dotted) override key's path and field type; a `no_` prefix on a boolean leaf is kept in the path."""
    parts = key.split(".")
    for part in parts[:-1]:
        nested = fields_of(cls).get(part)
        if not _is_section(nested):
            raise ConfigError(f"command line: {part!r} is not a config section of {cls.__name__}")
        cls = nested
    fields, leaf = fields_of(cls), parts[-1]
    if leaf in fields:
        return parts, fields[leaf]
    if leaf.startswith("no_") and _takes_bool(fields.get(leaf[3:])):
        return parts, None
    # Spelled as typed, section included (`--model.nlayer` was told "n_layer", itself an unknown option).
    hint = [".".join([*parts[:-1], h]) for h in difflib.get_close_matches(leaf, fields, n=1)]
    hint = ["--" + hint[0].replace("_", "-") if arg.startswith("--") else hint[0]] if hint else []
    raise ConfigError(f"command line: unknown option {arg!r} for {cls.__name__}"
                      + (f" (did you mean {hint[0]}?)" if hint else " (see --help)"))


def parse_overrides(cls: type, argv: list[str]) -> tuple[str | None, dict[str, Any]]:
    """Split argv into an optional `--config` path and a (nested) dict of overrides, still untyped."""
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
        if key == "config":
            if not eq:
                if i >= len(argv):
                    raise ConfigError("command line: --config needs a path")
                raw, i = argv[i], i + 1
            if config_path is not None:  # the second silently replaced the first, its out_dir too
                raise ConfigError(f"command line: one --config at a time (got {config_path} and {raw}); "
                                  "override single keys with key=value (with make: CONFIG=FILE ARGS='key=value')")
            config_path = raw
            continue
        parts, tp = _resolve(cls, key, arg)
        if tp is None:  # --no-flag
            if eq:
                raise ConfigError(f"command line: {arg!r}: a --no-... flag takes no value")
            parts[-1], value = parts[-1][3:], False
        elif not eq and _takes_bool(tp) and not (i < len(argv) and _is_value_word(argv[i])):
            value = True  # a bare --flag; the next argument is an option of its own
        else:
            if not eq:
                if i >= len(argv):
                    raise ConfigError(f"command line: {arg} needs a value")
                raw, i = argv[i], i + 1
            try:
                value = parse_value(raw, tp)
            except ValueError as err:
                raise ConfigError(f"command line: {arg!r}: {err}") from None
        section = out
        for part in parts[:-1]:
            if not isinstance(section.get(part), dict):
                section[part] = {}
            section = section[part]
        if parts[-1] in section and typing.get_origin(tp) in (list, tuple):
            # A list option given twice (`--data a --data b`, or make's DATA plus ARGS) takes both.
            value = [*list_items(section[parts[-1]]), *list_items(value)]
        section[parts[-1]] = value
    return config_path, out


def _option_lines(cls: type, prefix: str = "") -> list[str]:
    docs = field_docs(cls)
    defaults = cls()
    lines = []
    for name, tp in fields_of(cls).items():
        if _is_section(tp):
            lines += _option_lines(tp, f"{prefix}{name}.")
            continue
        tname = getattr(tp, "__name__", str(tp).replace("typing.", ""))
        lines.append(f"  --{prefix}{name.replace('_', '-')} ({tname}) [{getattr(defaults, name)!r}]")
        if name in docs:
            lines += ["      " + ln for ln in textwrap.wrap(docs[name], 90)]
    return lines


def help_text(cls: type, prog: str, description: str = "") -> str:
    lines = [f"usage: {prog} [--config FILE.yml] [key=value | --key value | --flag | --no-flag] ...", ""]
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

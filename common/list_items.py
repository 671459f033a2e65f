"""A list option's items from the text it was given as: `DATA="a.jsonl b/"` on make's command line,
`--data "my data/a.jsonl"` from a shell that split the words already, or a YAML list."""

from __future__ import annotations

import glob
import os
import shlex
from typing import Any


def list_items(value: Any) -> list[Any]:
    """A list value as a list. One given as a string (`DATA="a.jsonl b/"`) is split like a shell would,
    so an item with spaces can be quoted (`"'my data/a.jsonl' b/"`), unless the whole string names an
    existing path or a glob matching one; any other single value is one item."""
    if isinstance(value, (list, tuple)):
        return list(value)
    if not isinstance(value, str):
        return [value]
    if any(c.isspace() for c in value) and _names_a_path(value):
        # The shell has split this already (`--data "my data/a.jsonl"`): a value naming something that
        # exists as a whole is that one path, not the words `my` and `data/a.jsonl`.
        return [value]
    # POSIX quoting but no backslash escapes (a path may hold backslashes); an unbalanced quote (a
    # name like O'Brien.jsonl) means the text was not quoted at all.
    lexer = shlex.shlex(value, posix=True)
    lexer.whitespace_split, lexer.escape = True, ""
    try:
        return list(lexer)
    except ValueError:
        return value.split()


def _names_a_path(value: str) -> bool:
    """Whether `value` is an existing file or folder (even a broken link), or a glob matching one. Not
    a `**` glob: with no match, finding that out would walk the whole tree just to split the value."""
    if os.path.lexists(value):
        return True
    return glob.has_magic(value) and "**" not in value and next(glob.iglob(value), None) is not None

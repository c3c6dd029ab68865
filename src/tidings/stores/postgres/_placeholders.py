"""`?` placeholders on PostgreSQL.

Service code is written once for SQLite and PostgreSQL, so statements use `?` placeholders with
a sequence of parameters, as with SQLite. `translate_placeholders` turns `?` into psycopg's `%s`
outside quoted strings, quoted identifiers, dollar quotes and comments, and escapes every `%`
(so `LIKE 'a%'` just works); translations are cached. `??` outside quotes is a literal `?` (for
the jsonb operators `?`, `?|`, `?&`). Named parameters (a dict) are not supported: they raise
TypeError.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from typing import Any

from tidings.stores.transaction import Params

_SPECIAL = re.compile(r"[?%'\"$/-]")
_DOLLAR_TAG = re.compile(r"\$(?:[^\W\d]\w*)?\$")


def _is_ident_char(ch: str) -> bool:
    return ch.isalnum() or ch in "_$" or ord(ch) > 127


def _end_of_literal(text: str, start: int, quote: str, backslash: bool) -> int:
    """Index just past the literal opened at `start` (doubled quotes stay inside)."""
    i, n = start + 1, len(text)
    while i < n:
        ch = text[i]
        if backslash and ch == "\\":
            i += 2
        elif ch == quote:
            if i + 1 < n and text[i + 1] == quote:
                i += 2
            else:
                return i + 1
        else:
            i += 1
    return n


def _end_of_block_comment(text: str, start: int) -> int:
    """Index just past the /* comment */ at `start` (PostgreSQL nests them)."""
    depth, i, n = 0, start, len(text)
    while i < n:
        if text.startswith("/*", i):
            depth += 1
            i += 2
        elif text.startswith("*/", i):
            depth -= 1
            i += 2
            if depth == 0:
                return i
        else:
            i += 1
    return n


@functools.lru_cache(maxsize=1024)
def translate_placeholders(statement: str) -> str:
    """`statement` with `?` placeholders as psycopg `%s` ones (see the module docstring)."""
    out: list[str] = []
    i, n = 0, len(statement)
    while i < n:
        match = _SPECIAL.search(statement, i)
        if match is None:
            out.append(statement[i:])
            break
        j = match.start()
        out.append(statement[i:j])
        ch = statement[j]
        end = j + 1
        if ch == "?":
            if statement.startswith("??", j):
                out.append("?")
                end = j + 2
            else:
                out.append("%s")
            i = end
            continue
        if ch == "%":
            out.append("%%")
            i = end
            continue
        if ch == "'":
            escapes = (
                j > 0
                and statement[j - 1] in "eE"
                and (j < 2 or not _is_ident_char(statement[j - 2]))
            )
            end = _end_of_literal(statement, j, "'", escapes)
        elif ch == '"':
            end = _end_of_literal(statement, j, '"', False)
        elif ch == "-" and statement.startswith("--", j):
            newline = statement.find("\n", j)
            end = n if newline < 0 else newline + 1
        elif ch == "/" and statement.startswith("/*", j):
            end = _end_of_block_comment(statement, j)
        elif ch == "$" and (j == 0 or not _is_ident_char(statement[j - 1])):
            tag = _DOLLAR_TAG.match(statement, j)
            if tag is not None:
                close = statement.find(tag.group(), tag.end())
                end = n if close < 0 else close + len(tag.group())
        out.append(statement[j:end].replace("%", "%%"))
        i = end
    return "".join(out)


def arguments(params: Params) -> Sequence[Any]:
    if isinstance(params, dict):
        raise TypeError(
            "the PostgreSQL store takes ? placeholders with a sequence of parameters; named "
            "parameters (a dict) are not supported"
        )
    return params

"""Findings files split into JSON units: JSON Lines, one JSON document (pretty-printed or
not), or several documents one after another, each unit with its 1-based line. Pure."""

from __future__ import annotations

import itertools
import json
import operator
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import orjson


@dataclass(slots=True)  # not frozen, for speed (see `Finding`)
class FileUnit:
    """One parse unit of an input file: a JSON Lines line, or the whole document."""

    line: int  # 1-based
    data: bytes


def split_lines(lines: Iterable[bytes]) -> Iterator[FileUnit]:
    """One JSON document if the whole input parses as one; else documents one after
    another (pretty-printed ones concatenated, as `jq` without `-c` writes them) if the
    whole input is such documents; else JSON Lines.

    Streams: a JSON Lines input whose first line parses is never held whole in
    memory (one whose first line is broken is read whole once, to try it as a
    document). Blank lines hold no finding occurrence and are skipped.
    """
    for number, data in numbered_units(lines):
        yield FileUnit(number, data)


def numbered_units(lines: Iterable[bytes]) -> Iterator[tuple[int, bytes]]:
    """`split_lines` as (1-based line, data) pairs, for the backtest: no object per
    line, and past the first line a chain of C iterators (no Python frame per line).
    Reads up to the first non-blank line when called."""
    iterator = iter(lines)
    head: list[bytes] = []
    for line in iterator:
        head.append(line)
        if line.strip():
            break
    else:
        return iter(())
    first_number = len(head)
    if not _parses(head[-1]):
        rest = head + list(iterator)
        whole = b"".join(rest)
        if _parses(whole):
            return iter([(1, whole)])
        documents = _documents(whole)
        if documents is not None:
            return iter(documents)
        iterator = iter(rest[first_number - 1 :])
    else:
        iterator = itertools.chain([head[-1]], iterator)
    # (number, stripped line) for every line, blank ones (empty once stripped) left out.
    numbered = zip(itertools.count(first_number), map(bytes.strip, iterator), strict=False)
    return filter(operator.itemgetter(1), numbered)


def _parses(data: bytes) -> bool:
    try:
        orjson.loads(data)
    except orjson.JSONDecodeError:
        return False
    return True


def _documents(whole: bytes) -> list[tuple[int, bytes]] | None:
    """Two or more JSON documents one after another, each with the line it starts on;
    None unless the whole input is such documents."""
    try:
        text = whole.decode()
    except UnicodeDecodeError:
        return None
    decoder = json.JSONDecoder()
    found: list[tuple[int, bytes]] = []
    position, line, counted = 0, 1, 0
    while True:
        while position < len(text) and text[position].isspace():
            position += 1
        if position == len(text):
            break
        try:
            _, end = decoder.raw_decode(text, position)
        except ValueError:
            return None
        line += text.count("\n", counted, position)
        counted = position
        found.append((line, text[position:end].encode()))
        position = end
    return found if len(found) > 1 else None

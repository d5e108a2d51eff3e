"""Findings files split into units (`streams.core.files`): JSON Lines, one document, or
documents one after another, each with the line it starts on."""

from __future__ import annotations

import orjson

from streams.core.files import FileUnit, split_lines
from streams.core.findings import Finding
from tests.builders import dumps, finding, page, parse


def lines(text: bytes) -> list[FileUnit]:
    return list(split_lines(text.splitlines(keepends=True)))


def test_json_lines_keep_their_one_based_line_numbers_across_blank_lines() -> None:
    text = b"\n" + dumps(finding("a")) + b"\n\n" + dumps(finding("b")) + b"\n"
    units = lines(text)
    assert [u.line for u in units] == [2, 4]
    assert [orjson.loads(u.data)["Id"].rsplit("/", 1)[1] for u in units] == ["a", "b"]


def test_a_pretty_printed_document_is_one_unit_on_line_one() -> None:
    text = orjson.dumps(page([finding("a"), finding("b")]), option=orjson.OPT_INDENT_2)
    units = lines(text)
    assert len(units) == 1
    assert units[0].line == 1
    assert len(orjson.loads(units[0].data)["Findings"]) == 2


def test_a_public_pretty_printed_sample_file_is_one_unit() -> None:
    from tests.builders import PER_STANDARD_TEMPLATE, PUBLIC

    units = lines((PUBLIC / PER_STANDARD_TEMPLATE).read_bytes())
    assert [u.line for u in units] == [1]
    assert isinstance(parse(units[0].data)[0], Finding)


def test_json_lines_with_a_broken_first_line_are_still_read_line_by_line() -> None:
    text = b"{broken\n" + dumps(finding("a")) + b"\n" + dumps(finding("b")) + b"\n"
    units = lines(text)
    assert [u.line for u in units] == [1, 2, 3]
    assert units[0].data == b"{broken"


def test_json_lines_with_crlf_endings_are_stripped() -> None:
    text = dumps(finding("a")) + b"\r\n" + dumps(finding("b")) + b"\r\n"
    units = lines(text)
    assert [u.line for u in units] == [1, 2]
    assert all(isinstance(parse(u.data)[0], Finding) for u in units)


def test_an_empty_or_blank_file_has_no_units() -> None:
    assert lines(b"") == []
    assert lines(b"\n  \n\n") == []


def test_concatenated_pretty_printed_documents_are_one_unit_each_on_their_first_line() -> None:
    """`jq . a.json b.json > both.json`: documents one after another, not JSON Lines."""
    first = orjson.dumps(page([finding("a"), finding("b")]), option=orjson.OPT_INDENT_2)
    second = orjson.dumps(finding("c"), option=orjson.OPT_INDENT_2)
    text = b"\n" + first + b"\n" + second + b"\n"
    units = lines(text)
    assert [u.line for u in units] == [2, 3 + first.count(b"\n")]
    assert len(orjson.loads(units[0].data)["Findings"]) == 2
    assert isinstance(parse(units[1].data)[0], Finding)


def test_documents_followed_by_garbage_are_read_line_by_line_as_before() -> None:
    text = orjson.dumps(finding("a"), option=orjson.OPT_INDENT_2) + b"\n{not json\n"
    units = lines(text)
    assert len(units) == text.count(b"\n")  # every line its own unit: nothing guessed

"""passages.jsonl read on demand (``retrieve.passages.PassageTable``): real files on disk, awkward content."""

from __future__ import annotations

import pytest

from crossrank.errors import IndexLoadError
from crossrank.retrieve.passages import PassageTable, write_passages
from crossrank.types import Passage

AWKWARD = [
    Passage(id="a", doc_id="a", text="line one\nline two\r\nthree", title="Newlines"),
    Passage(id="b#0", doc_id="b", text="unicode \u2028 separator, emoji \U0001F600, \u00e9t\u00e9", title="", index=0),
    Passage(id="b#1", doc_id="b", text='quotes " and \\ backslashes', title="T", index=1),
    Passage(id="c", doc_id="c", text="", title="only a title"),
]


@pytest.mark.parametrize("in_memory", [False, True])
def test_round_trip_of_awkward_passages(tmp_path, in_memory):
    path = tmp_path / "passages.jsonl"
    write_passages(path, AWKWARD)
    table = PassageTable(path, in_memory=in_memory)
    assert len(table) == 4 and list(table) == AWKWARD
    assert table[-1] == AWKWARD[-1] and table[1:3] == AWKWARD[1:3]
    with pytest.raises(IndexError):
        table[4]


def test_empty_file_blank_lines_and_a_missing_last_newline(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    assert len(PassageTable(empty)) == 0
    path = tmp_path / "p.jsonl"
    write_passages(path, AWKWARD[:2])
    path.write_bytes(b"\n" + path.read_bytes().rstrip(b"\n"))  # a blank first line, no newline at the end
    assert list(PassageTable(path)) == AWKWARD[:2]


def test_a_corrupt_line_is_an_index_error_naming_the_file(tmp_path):
    path = tmp_path / "passages.jsonl"
    write_passages(path, AWKWARD[:2])
    path.write_bytes(path.read_bytes() + b'{"id": "x", "doc_\n')
    table = PassageTable(path)
    assert table[0] == AWKWARD[0]
    with pytest.raises(IndexLoadError, match=r"passages.jsonl is corrupt at passage 2"):
        table[2]
    with pytest.raises(IndexLoadError, match="cannot read"):
        PassageTable(tmp_path / "missing.jsonl")

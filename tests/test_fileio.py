"""Atomic writes: unique temporary names, so concurrent writers of one file never collide."""

import multiprocessing

import pytest

from mattransfer.fileio import atomic_path, temporary_name, write_atomic


def _write_many(path, token, n):
    for _ in range(n):
        write_atomic(path, token * 10_000)


def test_temporary_names_are_unique(tmp_path):
    names = {temporary_name(tmp_path / "x.pt") for _ in range(1000)}
    assert len(names) == 1000


def test_concurrent_writers_of_one_file_never_collide(tmp_path):
    """Two processes rewriting one file: every read sees one writer's whole text, no error, no leftovers."""
    path = tmp_path / "entry.txt"
    context = multiprocessing.get_context("fork")
    writers = [context.Process(target=_write_many, args=(path, token, 200)) for token in "ab"]
    for w in writers:
        w.start()
    while any(w.is_alive() for w in writers):
        if path.exists():
            text = path.read_text()
            assert text in ("a" * 10_000, "b" * 10_000)
    assert all(w.exitcode == 0 for w in writers)
    assert [p.name for p in tmp_path.iterdir()] == ["entry.txt"]


def test_failed_write_leaves_neither_file_nor_temporary(tmp_path):
    path = tmp_path / "out.txt"
    with pytest.raises(RuntimeError):
        with atomic_path(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed mid-write")
    assert list(tmp_path.iterdir()) == []

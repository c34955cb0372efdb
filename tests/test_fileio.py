"""Atomic writes: all or nothing, and the permissions a plain open() would give."""
import os
import stat

import numpy as np
import pytest

import tinygraph as tg
from tinygraph.fileio import atomic_write, atomic_write_bytes, atomic_write_text


@pytest.fixture
def umask():
    """Set a umask for one test and restore the old one."""
    old = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(old)


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def _plain_open_mode(folder, name="plain"):
    path = folder / name
    with open(path, "w"):
        pass
    return _mode(path)


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_new_file_gets_the_mode_a_plain_open_gives(tmp_path, umask, mask):
    umask(mask)
    atomic_write_text(tmp_path / "a.txt", "hello")
    assert _mode(tmp_path / "a.txt") == _plain_open_mode(tmp_path) == 0o666 & ~mask


def test_replacing_a_file_keeps_its_mode(tmp_path, umask):
    path = tmp_path / "a.bin"
    path.write_bytes(b"old")
    os.chmod(path, 0o640)
    atomic_write_bytes(path, b"new", fsync=False)
    assert path.read_bytes() == b"new" and _mode(path) == 0o640


def test_a_failing_writer_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "state.txt"
    atomic_write_text(path, "version 1")

    def half_then_crash(f):
        f.write("version 2, half writ")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(path, half_then_crash, mode="w")
    assert path.read_text() == "version 1"
    assert sorted(os.listdir(tmp_path)) == ["state.txt"]


def test_text_and_bytes_round_trip(tmp_path):
    atomic_write_text(tmp_path / "t.txt", "ünïcode\nline 2\n")
    assert (tmp_path / "t.txt").read_text(encoding="utf-8") == "ünïcode\nline 2\n"
    returned = atomic_write_bytes(str(tmp_path / "b.bin"), bytes(range(256)))
    assert returned == str(tmp_path / "b.bin")
    assert (tmp_path / "b.bin").read_bytes() == bytes(range(256))
    with pytest.raises(ValueError, match="mode must be"):
        atomic_write(tmp_path / "x", lambda f: None, mode="a")


def test_save_writes_a_normally_readable_file(tmp_path, umask):
    # save used mkstemp, whose files are 0o600 whatever the umask
    path = tmp_path / "model.npz"
    tg.save({"w": np.arange(3.0)}, path)
    assert _mode(path) == 0o644
    np.testing.assert_array_equal(tg.load(path)["w"], np.arange(3.0))


def test_writing_through_a_symlink_writes_its_target_and_keeps_the_link(tmp_path):
    from tinygraph.fileio import atomic_write_text
    target = tmp_path / "run3.ckpt"
    target.write_text("old")
    link = tmp_path / "latest.ckpt"
    link.symlink_to(target)
    assert atomic_write_text(link, "new") == str(link)
    assert link.is_symlink() and target.read_text() == "new"


def test_a_missing_folder_is_named_not_the_temporary_file(tmp_path):
    from tinygraph.fileio import atomic_write_text
    with pytest.raises(FileNotFoundError, match="no-such-folder.*does not exist"):
        atomic_write_text(tmp_path / "no-such-folder" / "x.txt", "x")

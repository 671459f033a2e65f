import os
import stat

from common.files import atomic_write_bytes


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_a_replaced_file_keeps_its_permission_bits(tmp_path):
    """The temp file behind the rename is created with the umask's mode: a config.json the user made
    read-only (or group-writable) came back 0644 after every export."""
    for mode in (0o444, 0o664, 0o600):
        path = tmp_path / f"config-{mode:o}.json"
        path.write_bytes(b"old")
        path.chmod(mode)
        atomic_write_bytes(path, b"new")
        assert path.read_bytes() == b"new"
        assert _mode(path) == mode


def test_a_new_file_gets_the_umasks_mode(tmp_path):
    old_umask = os.umask(0o027)
    try:
        atomic_write_bytes(tmp_path / "manifest.json", b"{}")
    finally:
        os.umask(old_umask)
    assert _mode(tmp_path / "manifest.json") == 0o640

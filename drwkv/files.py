"""Files drwkv reads and writes: paths an artifact names, and writes that never leave a partial file.

Every file the project writes goes through ``atomic_write``: the bytes go to a hidden temp file in
the destination's folder, which is renamed over the destination only once it is complete. A reader
(or a run killed half-way) sees the old file or the new one, never a mix; an interrupted write that
Python sees (an exception, Ctrl-C) removes its temp file.

An artifact (an ONNX model, an engine sidecar, a checkpoint) may name other files, e.g. its VAE
decoder; ``file_in_folder`` resolves such a name and refuses one that leads outside the artifact's
own folder (absolute paths, "..", symbolic links pointing out), so a downloaded model cannot make
drwkv open anything else on the machine.
"""
import contextlib
import os
import tempfile

# mkstemp makes owner-only files; a written file gets the usual permissions (0666 less the umask).
_UMASK = os.umask(0o022)
os.umask(_UMASK)

class UnsafePathError(ValueError):
    """A path named by an artifact that leads outside the artifact's folder; the message is one line."""


def file_in_folder(folder, name, what):
    """``folder``/``name`` when it stays inside ``folder`` (after resolving symbolic links), else
    UnsafePathError naming ``what`` (e.g. "the VAE decoder named in model.onnx")."""
    name = os.fspath(name)
    if not name or os.path.isabs(name) or "\0" in name:
        raise UnsafePathError(f"{what} is {name!r}: an artifact may only name files inside its own folder")
    root = os.path.realpath(folder or ".")
    resolved = os.path.realpath(os.path.join(root, name))
    if os.path.commonpath([root, resolved]) != root:
        raise UnsafePathError(f"{what} is {name!r}, which leads outside {folder or '.'}: an artifact may only "
                              f"name files inside its own folder")
    return os.path.join(folder, name) if folder else name


def check_writable(path, what="output"):
    """Refuse (OSError with a one-line message) a file path that cannot be written: a directory, a
    folder under a file, or a folder this process cannot write into. Leaves nothing behind: a probe
    file is made and removed in the nearest folder that exists."""
    path = os.path.abspath(os.fspath(path))
    if os.path.isdir(path):
        raise IsADirectoryError(f"cannot write {what} {path}: it is a directory")
    existing = os.path.dirname(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise NotADirectoryError(f"cannot write {what} {path}: {existing} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".drwkv-probe.", suffix=".tmp", dir=existing)
    except OSError as e:
        raise OSError(f"cannot write {what} {path}: {e.strerror or e}") from None
    os.close(fd)
    os.remove(probe)


def check_writable_folder(folder, what="output folder"):
    """Refuse (OSError, one line) a folder that cannot be made or written into; makes nothing."""
    folder = os.fspath(folder)
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise NotADirectoryError(f"cannot write {what} {folder}: it is a file, not a folder")
    check_writable(os.path.join(folder, "probe"), what)


@contextlib.contextmanager
def atomic_write(path, replace=True):
    """``with atomic_write(path) as tmp:`` write the file at ``tmp``; on leaving the block it replaces
    ``path`` in one rename. On an exception the temp file is removed and ``path`` is left as it was.
    replace=False: FileExistsError if ``path`` exists by then (a link, unlike a rename, never replaces)."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    root, ext = os.path.splitext(os.path.basename(path))
    # The temp name keeps the extension: some writers (PIL, numpy) choose the format by it.
    fd, tmp = tempfile.mkstemp(prefix=f".{root}.", suffix=f".tmp{ext}", dir=folder)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_UMASK)
        if replace:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)
            os.remove(tmp)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def write_bytes_atomically(path, data):
    """Write ``data`` (bytes) to ``path`` through atomic_write."""
    with atomic_write(path) as tmp, open(tmp, "wb") as f:
        f.write(data)

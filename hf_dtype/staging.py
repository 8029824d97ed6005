"""Writing a dataset folder whole or not at all, and cleaning up after runs that were killed.

``staged(OUT)`` gives a path in ``.OUT.PID.partial`` beside ``OUT`` for ``save_to_disk`` (with
``datasets``' temporary cache files inside it too), ``publish`` renames the result into place, and
``remove_stale_staging`` removes what a killed run left (putting back an ``OUT`` it was replacing).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import datasets
import datasets.fingerprint

__all__ = ["publish", "remove_stale_staging", "staged"]

_STAGING_KINDS = ("partial", "old")


def _staging_folder(out: Path, kind: str, pid: int | None = None) -> Path:
    """``.OUT.PID.partial`` (the dataset being written) or ``.OUT.PID.old`` (the OUT being replaced), beside ``out``."""
    return out.parent / f".{out.name}.{os.getpid() if pid is None else pid}.{kind}"


def _is_running(pid: int) -> bool:
    """Whether another process ``pid`` is alive (on Windows, where ``os.kill`` cannot ask, assume it is)."""
    if pid == os.getpid():
        return False
    if os.name == "nt":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def remove_stale_staging(out: Path) -> list[Path]:
    """Remove the ``.OUT.PID.partial`` / ``.OUT.PID.old`` left beside ``out`` by runs that were killed; return them.

    A run killed between the renames of ``publish`` leaves no ``out`` but a whole ``.OUT.PID.old``: it is put back.
    """
    pattern = re.compile(rf"\.{re.escape(out.name)}\.([1-9][0-9]{{0,9}})\.({'|'.join(_STAGING_KINDS)})")
    if not out.parent.is_dir():
        return []
    stale = [(entry, match[2]) for entry in sorted(out.parent.iterdir())
             if (match := pattern.fullmatch(entry.name)) is not None and not _is_running(int(match[1]))]
    for entry, kind in stale:
        if kind == "old" and not os.path.lexists(out):
            os.replace(entry, out)
        else:
            _remove(entry)
    return [entry for entry, _ in stale]


@contextlib.contextmanager
def _temporary_files_in(folder: Path) -> Iterator[None]:
    """Disable ``datasets``' caching, with its temporary cache files (``hf_datasets-*``) and ``tempfile``'s in ``folder``.

    ``datasets`` makes that folder once per process, in ``$TMPDIR`` (read before ``tempfile.tempdir``), and removes
    it only at exit: a killed run would leave it behind. Here a fresh one is made in ``folder``, which the caller
    removes; the process's own folder, if it had one, is put back on the way out.
    """
    folder.mkdir()
    environment = {name: os.environ.get(name) for name in ("TMPDIR", "TEMP", "TMP")}
    tempdir, cache_dir = tempfile.tempdir, datasets.fingerprint._TEMP_DIR_FOR_TEMP_CACHE_FILES
    caching = datasets.is_caching_enabled()
    os.environ["TMPDIR"] = tempfile.tempdir = str(folder)
    datasets.fingerprint._TEMP_DIR_FOR_TEMP_CACHE_FILES = None  # made again, in folder, on first use
    datasets.disable_caching()  # map would otherwise write its cache file into IN's folder
    try:
        yield
    finally:
        datasets.fingerprint._TEMP_DIR_FOR_TEMP_CACHE_FILES = cache_dir
        tempfile.tempdir = tempdir
        for name, value in environment.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        if caching:
            datasets.enable_caching()


@contextlib.contextmanager
def staged(out: Path) -> Iterator[Path]:
    """A path to ``save_to_disk`` into, in a fresh ``.OUT.PID.partial`` folder removed on exit whatever happens.

    ``datasets``' temporary files go into the staging folder too, so a killed run leaves nothing elsewhere.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = _staging_folder(out, "partial")
    staging.mkdir()
    try:
        with _temporary_files_in(staging / "tmp"):
            yield staging / out.name  # save_to_disk makes it, with the mode it gives any new folder
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def publish(written: Path, out: Path) -> None:
    """Rename ``written`` (in its staging folder) to ``out``.

    An existing ``out`` is renamed to ``.OUT.PID.old`` first, then into the staging folder, which is removed after:
    so ``.OUT.PID.old`` is always whole, and holds the only copy of ``out`` when it stands alone.
    """
    if not out.exists():
        os.replace(written, out)
        return
    retired = _staging_folder(out, "old")
    os.replace(out, retired)
    try:
        os.replace(written, out)
    except OSError:
        os.replace(retired, out)
        raise
    os.replace(retired, written.parent / "replaced")

"""Writing a dataset folder whole or not at all, and cleaning up after runs that were killed.

``staged(OUT)`` gives a path in ``.OUT.PID.partial`` beside ``OUT`` for ``save_to_disk`` (with
``datasets``' temporary cache files inside it too), ``publish`` renames the result into place, and
``remove_stale_staging`` removes what a killed run left (putting back an ``OUT`` it was replacing).
``foreign_entries`` says what an existing ``OUT`` holds that ``save_to_disk`` did not write (only an
``OUT`` without any may be replaced), and ``check_target`` refuses, before any work, an ``OUT`` that is or
holds ``IN`` or the working folder, holds anything else, exists without ``overwrite`` or cannot be written.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import datasets

from ._compat import temporary_cache_dir

__all__ = ["check_target", "foreign_entries", "os_reason", "publish", "remove_stale_staging", "staged", "write_error"]

_STAGING_KINDS = ("partial", "old")
# What Dataset.save_to_disk writes (shards, state, info), and the cache files that map / filter write beside a loaded
# dataset (cleanup_cache_files removes those by the same name pattern)
_DATASET_MARKERS = ("dataset_info.json", "state.json")
_DATASET_FILE = re.compile(r"data-[0-9]{5,}-of-[0-9]{5,}\.arrow|cache-.+\.arrow")
_DATASET_DICT_MARKER = "dataset_dict.json"


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


def _dataset_dict_splits(folder: Path) -> list[str]:
    """The split names that ``folder/dataset_dict.json`` lists; none if it is not the ``{"splits": [...]}`` save_to_disk writes."""
    try:
        splits = json.loads((folder / _DATASET_DICT_MARKER).read_text(encoding="utf-8"))["splits"]
    except (OSError, ValueError, TypeError, KeyError):
        return []
    return [split for split in splits if isinstance(split, str)] if isinstance(splits, list) else []


def _foreign_in_dataset(folder: Path) -> list[str]:
    """The entries of a ``Dataset.save_to_disk`` folder that it did not write; all of them if it lacks its state or info."""
    entries = sorted(folder.iterdir())
    if not all((folder / marker).is_file() and not (folder / marker).is_symlink() for marker in _DATASET_MARKERS):
        return [_entry_name(entry) for entry in entries]
    return [_entry_name(entry) for entry in entries if entry.name not in _DATASET_MARKERS
            and not (_DATASET_FILE.fullmatch(entry.name) and entry.is_file() and not entry.is_symlink())]


def _entry_name(entry: Path) -> str:
    return entry.name + "/" if entry.is_dir() and not entry.is_symlink() else entry.name


def foreign_entries(out: Path) -> list[str]:
    """What replacing ``out`` would delete that ``save_to_disk`` did not write there, as paths relative to ``out``.

    None for an empty folder, a ``Dataset`` folder (its shards, ``state.json``, ``dataset_info.json`` and ``datasets``'
    ``cache-*.arrow``) or a ``DatasetDict`` folder (``dataset_dict.json`` and one such folder per split it lists);
    ``[""]`` when ``out`` is not a folder. Anything else is the caller's, and is not for ``--overwrite`` to delete.
    """
    if not out.is_dir() or out.is_symlink():
        return [""]
    if not (out / _DATASET_DICT_MARKER).is_file():
        entries = sorted(out.iterdir())
        return [] if not entries else _foreign_in_dataset(out)
    splits = _dataset_dict_splits(out)
    foreign = []
    for entry in sorted(out.iterdir()):
        if entry.name == _DATASET_DICT_MARKER and not entry.is_symlink():
            continue
        if entry.name in splits and entry.is_dir() and not entry.is_symlink():
            foreign += [f"{entry.name}/{name}" for name in _foreign_in_dataset(entry)]
        else:
            foreign.append(_entry_name(entry))
    return foreign


def _missing_folders(folder: Path) -> list[Path]:
    """``folder`` and its ancestors that do not exist yet, deepest first: what ``mkdir(parents=True)`` would make."""
    missing = []
    while not os.path.lexists(folder) and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def _remove_empty(folders: list[Path]) -> None:
    """Remove the folders a failed run made, deepest first, each only if it is empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


@contextlib.contextmanager
def _staging_folder_made(out: Path) -> Iterator[Path]:
    """A fresh ``.OUT.PID.partial`` beside ``out`` (its parents made as needed), removed on exit with the parents it made
    if no ``out`` came of it."""
    made = _missing_folders(out.parent)
    staging = _staging_folder(out, "partial")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging.mkdir()
    except OSError:
        _remove_empty(made)
        raise
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if not os.path.lexists(out):
            _remove_empty(made)


@contextlib.contextmanager
def _temporary_files_in(folder: Path) -> Iterator[None]:
    """Disable ``datasets``' caching, with its temporary cache files (``hf_datasets-*``) and ``tempfile``'s in ``folder``.

    ``datasets`` makes that folder once per process, in ``$TMPDIR`` (read before ``tempfile.tempdir``), and removes
    it only at exit: a killed run would leave it behind. Here a fresh one is made in ``folder``, which the caller
    removes; the process's own folder, if it had one, is put back on the way out.
    """
    folder.mkdir()
    environment = {name: os.environ.get(name) for name in ("TMPDIR", "TEMP", "TMP")}
    tempdir = tempfile.tempdir
    caching = datasets.is_caching_enabled()
    os.environ["TMPDIR"] = tempfile.tempdir = str(folder)
    datasets.disable_caching()  # map would otherwise write its cache file into IN's folder
    try:
        with temporary_cache_dir():  # made again, in folder, on first use
            yield
    finally:
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

    ``datasets``' temporary files go into the staging folder too, so a killed run leaves nothing elsewhere; the
    parent folders made for ``out`` are removed too when no ``out`` came of it (an error, a read-only place).
    """
    with _staging_folder_made(out) as staging, _temporary_files_in(staging / "tmp"):
        yield staging / out.name  # save_to_disk makes it, with the mode it gives any new folder


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


def os_reason(error: OSError) -> str:
    """An ``OSError`` in one line: the system's reason and the path(s) it names."""
    if not error.strerror:
        text = str(error).strip()
        return text.splitlines()[0] if text else type(error).__name__
    paths = [str(name) for name in (error.filename, error.filename2) if name is not None]
    return f"{error.strerror}: {' -> '.join(paths)}" if paths else error.strerror


def _within(folder: Path, path: Path) -> bool:
    return path == folder or folder in path.parents


def _as_written(path: Path) -> Path:
    """``path`` made absolute without following symlinks."""
    return Path(os.path.abspath(path))


def _check_apart(given_in: str, given_out: str) -> None:
    """Refuse an OUT whose writing or replacing would touch IN or pull the working folder away.

    Checked with symlinks followed, then as written (an IN reached through a symlink inside OUT is deleted with OUT).
    """
    expected = "expected an OUT folder outside IN that does not contain it (IN is never modified)"
    for absolute in (Path.resolve, _as_written):
        source, out, here = absolute(Path(given_in)), absolute(Path(given_out)), absolute(Path.cwd())
        if out == source:
            raise ValueError(f"OUT {given_out} is IN {given_in}; {expected}.")
        if _within(source, out):
            raise ValueError(f"OUT {given_out} lies inside IN {given_in}; {expected}.")
        if _within(out, source):
            raise ValueError(f"OUT {given_out} contains IN {given_in}, which replacing OUT would delete; {expected}.")
        if _within(out, here):
            raise ValueError(f"OUT {given_out} is or contains the working folder {here}; expected an OUT folder that does not "
                           f"contain it, e.g. {Path(given_in).stem or 'dataset'}-compact.")


def _check_replaceable(given_out: str, out: Path, overwrite: bool) -> None:
    """Refuse an existing OUT that holds anything save_to_disk did not write (whatever the flags), or any without --overwrite."""
    if not os.path.lexists(out):
        return
    foreign = foreign_entries(out)
    remedy = "--overwrite replaces only a folder that save_to_disk wrote, or an empty one: pick another OUT or remove it by hand"
    if foreign == [""]:
        raise ValueError(f"OUT {given_out} is a file, not a dataset folder; {remedy}.")
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise ValueError(f"OUT {given_out} holds what save_to_disk did not write, which replacing it would delete: {shown}; {remedy}.")
    if not overwrite:
        raise ValueError(f"{given_out} exists; pass --overwrite to replace it.")


def write_error(given_out: str, error: OSError) -> ValueError:
    """The one-line error of an OUT that could not be written."""
    return ValueError(f"cannot write OUT {given_out} ({os_reason(error)}); expected a place this user can write, with room "
                    "for the dataset. Nothing was written.")


def _check_writable(given_out: str, out: Path) -> None:
    """Refuse, before the work, an OUT under a file or in a place that cannot be written (making and removing its staging
    folder)."""
    existing = next(folder for folder in out.parents if os.path.lexists(folder))
    if not existing.is_dir():
        raise ValueError(f"cannot write OUT {given_out}: {existing} is a file, not a folder; expected OUT in a folder.")
    try:
        with _staging_folder_made(out):
            pass
    except OSError as error:
        raise write_error(given_out, error) from None


def check_target(given_in: str, given_out: str, overwrite: bool) -> Path:
    """OUT (resolved) once it is safe to write, before any work: apart from IN and the working folder, holding only what
    ``save_to_disk`` wrote (and replaced only with ``overwrite``), writable; staging folders of killed runs removed."""
    _check_apart(given_in, given_out)
    out = Path(given_out).resolve()
    remove_stale_staging(out)
    _check_replaceable(given_out, out, overwrite)
    _check_writable(given_out, out)
    return out

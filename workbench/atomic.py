"""Atomic writes: a file or a folder is either whole or absent, never half-written.

Everything is first written next to its destination under a temporary name, flushed, then renamed into place
(``os.replace`` is atomic on one file system).

A temporary folder can carry a writer marker (``atomic_dir(..., mark_writer=True)``): a small JSON file naming the
writing process (pid, host, the process's start time and the machine's boot id). :func:`tmp_state` reads it back:
``"alive"`` while that process runs, ``"gone"`` once it has ended (or the machine rebooted, or its pid now belongs to
another process), ``"unknown"`` without a marker or on another host. :func:`is_stale_tmp` calls a leftover stale
when its writer is gone, or when its state is unknown and it is older than ``STALE_TMP_S`` (24 h); a live writer's
folder is never stale.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

TMP_PREFIX = ".tmp-"
#: the writer marker inside a temporary folder (removed before the folder is renamed into place)
WRITER_MARKER = ".writer.json"
#: a leftover whose writer cannot be checked (no marker, another host) is stale after this many seconds
STALE_TMP_S = 24 * 3600.0


def write_bytes(path: Path | str, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text(path: Path | str, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    write_bytes(path, text.encode("utf-8"))


def write_json(path: Path | str, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} as JSON")


@contextlib.contextmanager
def atomic_dir(dest: Path | str, *, overwrite: bool = False, mark_writer: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``dest``; on success rename it to ``dest``, on error remove it.

    With ``overwrite`` an existing ``dest`` is replaced (the old one is moved aside first, then deleted). With
    ``mark_writer`` the folder holds a :data:`WRITER_MARKER` naming this process while it is written (so a cleaner
    can tell a killed writer's leftover from a live one); the marker is removed before the rename.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f"{TMP_PREFIX}{dest.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        if mark_writer:
            write_json(tmp / WRITER_MARKER, writer_identity())
        yield tmp
        if mark_writer:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp / WRITER_MARKER)
        if dest.exists():
            if not overwrite:
                raise FileExistsError(f"{dest} already exists")
            old = dest.parent / f"{TMP_PREFIX}old-{dest.name}-{uuid.uuid4().hex[:8]}"
            os.replace(dest, old)
            os.replace(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip() or None
    except OSError:
        return None


def _process_start(pid: int) -> str | None:
    """The start time of process ``pid`` in clock ticks since boot (Linux), or None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()  # the command name may hold spaces and parentheses
    return fields[19] if len(fields) > 19 else None


def writer_identity() -> dict[str, Any]:
    """What a writer marker records about this process: pid, host, start time, boot id, wall-clock time."""
    pid = os.getpid()
    return {"pid": pid, "host": socket.gethostname(), "start": _process_start(pid), "boot": _boot_id(),
            "time": time.time()}


def tmp_state(path: Path | str) -> str:
    """``"alive"``, ``"gone"`` or ``"unknown"``: whether the writer named in ``path``'s marker still runs."""
    marker = Path(path) / WRITER_MARKER
    try:
        who = json.loads(marker.read_text(encoding="utf-8"))
        pid, host = who["pid"], who["host"]
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        return "unknown"
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0 or host != socket.gethostname():
        return "unknown"
    boot = _boot_id()
    if boot is not None and who.get("boot") not in (None, boot):
        return "gone"  # the machine rebooted since
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return "gone"
    except PermissionError:
        pass  # it exists, under another user
    except OSError:
        return "unknown"
    start = _process_start(pid)
    if start is not None and who.get("start") not in (None, start):
        return "gone"  # the pid was reused by a later process
    return "alive"


def is_stale_tmp(path: Path | str, max_age_s: float = STALE_TMP_S, *, now: float | None = None) -> bool:
    """Whether a temporary leftover may be removed: its writer is gone, or its writer is unknown and the leftover
    was last modified more than ``max_age_s`` seconds ago. A live writer's folder is never stale."""
    path = Path(path)
    state = tmp_state(path) if path.is_dir() and not path.is_symlink() else "unknown"
    if state != "unknown":
        return state == "gone"
    try:
        mtime = path.lstat().st_mtime
    except OSError:
        return False
    return (time.time() if now is None else now) - mtime >= max_age_s


def remove_tmp(path: Path | str) -> None:
    """Remove a temporary leftover: a link or file is unlinked (a link's target is never touched), a folder
    removed with its contents."""
    path = Path(path)
    if path.is_symlink() or not path.is_dir():
        path.unlink()
    else:
        shutil.rmtree(path)


def clean_stale_tmp(folder: Path | str) -> None:
    """Remove temporary leftovers (from a killed writer) directly under ``folder``."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    for child in folder.iterdir():
        if child.name.startswith(TMP_PREFIX):
            if child.is_dir():
                shutil.rmtree(child, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    child.unlink()

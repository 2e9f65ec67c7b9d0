"""Writing a file so that a reader sees the old content or the new one, never a part of it.

Every writer of a file in a store (run.json and the other JSON files of a run, the sweep
summary, reports, figures) goes through `write_atomic`: the bytes go to a temporary file of
its own in the same folder (a unique name per writer, so two threads or processes never
share one), are fsynced, and replace the target in one rename.

A writer killed between creating its temporary file and the rename leaves the file behind;
`remove_stale_temps` (called when a run starts in a store) removes the ones whose writer is
gone. The temporary name says which host and process wrote it, e.g.
`.run.json~node7~4242~k3j2.tmp`.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import tempfile
import time
from pathlib import Path

from study.identity import pid_alive

# A write takes milliseconds: a temporary file this old has no writer any more, whoever
# wrote it (another host's process on a shared file system included).
STALE_TEMP_S = 600.0
# A temporary file of a process of this host that no longer exists, older than this, is stale.
DEAD_WRITER_GRACE_S = 2.0
TEMP_SUFFIX = ".tmp"
# Temporary names written before this module (`run.json.<pid>.tmp`, `.checkpoint.pt.<pid>.tmp`).
_PID_ONLY = re.compile(r"^\.?.+\.(\d+)\.tmp$")


def _host() -> str:
    return socket.gethostname().replace("~", "-") or "host"


def temp_prefix(path: str | Path) -> str:
    """The start of a temporary name for `path` (`.NAME~HOST~PID~`), for tempfile's prefix=
    with suffix TEMP_SUFFIX: unique per writer, and it says whose it is."""
    return f".{Path(path).name}~{_host()}~{os.getpid()}~"


def write_atomic(path: str | Path, data: bytes | str, mode: int | None = None) -> None:
    """Write `data` (str: UTF-8) to `path` atomically; safe from any thread or process."""
    path = Path(path)
    raw = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=temp_prefix(path), suffix=TEMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp makes the file private; give it the mode a plain open() would have.
        if mode is None:
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _writer(name: str) -> tuple[str | None, int | None]:
    """(host, pid) of the writer a temporary file name records; (None, pid) for pid-only
    names, (None, None) for others."""
    parts = name[: -len(TEMP_SUFFIX)].rsplit("~", 3)
    if len(parts) == 4 and parts[2].isdigit():
        return parts[1], int(parts[2])
    old = _PID_ONLY.match(name)
    return (None, int(old.group(1))) if old else (None, None)


def is_stale(path: Path, max_age: float = STALE_TEMP_S) -> bool:
    """Whether a temporary file's writer is gone: it is older than max_age, or its name
    says it was written by a process of this host that has exited. (A pid-only name may be
    another host's live writer on a shared file system: only the age rule applies to it.)"""
    try:
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return False
    if age > max_age:
        return True
    host, pid = _writer(path.name)
    if pid is None or host != _host():
        return False
    return age > DEAD_WRITER_GRACE_S and pid != os.getpid() and not pid_alive(pid)


def remove_stale_temps(
    folder: str | Path, depth: int = 1, max_age: float = STALE_TEMP_S
) -> list[Path]:
    """Remove the stale temporary files (and folders) in `folder` and its subfolders `depth`
    levels down (a store and its run folders); what was removed."""
    folder, removed = Path(folder), []
    patterns = ["*" + TEMP_SUFFIX] + [("*/" * (d + 1)) + "*" + TEMP_SUFFIX for d in range(depth)]
    for pattern in patterns:
        for path in folder.glob(pattern):
            if not is_stale(path, max_age):
                continue
            try:
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()
                removed.append(path)
            except FileNotFoundError:  # another process removed it first
                pass
    return removed

"""Rules about runs that every part of study shares: which config keys say what a run trained,
how runs are ordered, when a time was recorded, and whether a run (or a claim) is still alive.
Each rule lives here once; the sweep, sync, the readers and the report call it."""

from __future__ import annotations

import os
import socket
from datetime import UTC, datetime
from pathlib import Path

# Config keys that say where or how a run ran and what it kept, not what it trained: runs that
# differ only in these trained the same thing. A sweep cell matches such runs, the report pools
# them as repeats, and a resumed run may change them.
PLACE_KEYS = (
    "data_root",
    "download",
    "num_workers",
    "checkpoint_dir",
    "checkpoint_every",
    "device",
    "data_on_device",
    "resume",
    "gallery",
)


def as_trained(config: dict) -> dict:
    """A stored config with every setting added since it was recorded set to the value the run
    trained with then (settings.BEFORE_RECORDED): what a sweep, reproduce and resume read."""
    from study.settings import BEFORE_RECORDED

    return {**BEFORE_RECORDED, **config}


def trained(config: dict) -> dict:
    """The part of a config that says what a run trained (as_trained)."""
    return {k: v for k, v in as_trained(config).items() if k not in PLACE_KEYS}


def run_order(run_id: str) -> tuple:
    """Sort key of run ids: numbers in numeric order, then other names."""
    run_id = str(run_id)
    return (not run_id.isdigit(), int(run_id) if run_id.isdigit() else 0, run_id)


# Sacred beats every 10 s (a claim holder touches its claim every CLAIM_TOUCH_S): two minutes
# without a sign of life and the process is taken for gone. Tests shorten both by environment.
STALE_S = float(os.environ.get("STUDY_STALE_S", 120.0))
CLAIM_TOUCH_S = float(os.environ.get("STUDY_CLAIM_TOUCH_S", 30.0))
# A sign of life dated more than this ahead of our clock (skew, or a hostile store) is no sign:
# trusted, it would keep a run or claim alive, and a sweep waiting on it, for ever.
FUTURE_S = 300.0


def this_host() -> str:
    return socket.gethostname() or "localhost"


def pid_alive(pid: int) -> bool:
    """Whether a process of this host with this id exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    except OverflowError:  # a number no process id can be
        return False
    return not _zombie(pid)


def _zombie(pid: int) -> bool:
    """A killed process whose parent has not collected it yet (state Z on Linux): dead, though
    signals still find it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False  # no /proc (macOS), or gone meanwhile: the signal's answer stands
    return stat.rpartition(")")[2].split()[:1] == ["Z"]


def parse_time(value) -> datetime | None:
    """A recorded time (ISO text as the file store keeps it, a datetime as MongoDB does, or
    epoch seconds) as a naive UTC datetime; None when absent or unreadable."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        try:
            return datetime.fromtimestamp(value, UTC).replace(tzinfo=None)
        except (OverflowError, OSError, ValueError):  # a number no clock gives
            return None
    if not isinstance(value, datetime):
        try:
            value = datetime.fromisoformat(str(value)[:64])
        except ValueError:
            return None
    if value.tzinfo is not None:  # Sacred writes naive UTC; anything else is converted
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def age_s(last_sign) -> float | None:
    """Seconds since `last_sign` (see parse_time); None when unknown."""
    when = parse_time(last_sign)
    return None if when is None else (utcnow() - when).total_seconds()


def sign_of_life(value) -> datetime | None:
    """A recorded time as a sign of life (see parse_time); None when absent, unreadable or
    more than FUTURE_S in the future."""
    when = parse_time(value)
    if when is None or (when - utcnow()).total_seconds() > FUTURE_S:
        return None
    return when


def alive(last_sign, host: str | None = None, pid: int | None = None) -> bool:
    """Whether what left `last_sign` (a run's heartbeat, a claim's last touch) is still at
    work: not when it says it is a process of this host that no longer exists; otherwise while
    its last sign of life is younger than STALE_S. The one liveness rule of study."""
    if host is not None and pid is not None and host == this_host() and not pid_alive(pid):
        return False
    when = sign_of_life(last_sign)
    return when is not None and (utcnow() - when).total_seconds() < STALE_S


def run_alive(status: str, heartbeat, start_time, host=None, pid=None) -> bool:
    """Whether a RUNNING (or QUEUED) run is still at work: its last heartbeat (before its
    first one, its start) is recent, and when it says which process of this host records it
    (`host`, `pid`: meta.process), that process exists."""
    return status in ("RUNNING", "QUEUED") and alive(
        sign_of_life(heartbeat) or sign_of_life(start_time), host, pid
    )

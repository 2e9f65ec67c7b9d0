"""Bounded reading of untrusted data files: every read has a cap fixed by the format, and every
problem becomes one CorruptData line that names the file and says what is wrong in words."""

from __future__ import annotations

import os
import re
import stat
import zipfile
from pathlib import Path
from typing import BinaryIO

from study.errors import CorruptData

MIB = 1 << 20


def one_line(text: str) -> str:
    """text on one line, without the repr of an in-memory buffer (which says nothing to a user)."""
    text = re.sub(r"<_io\.\w+ object at 0x[0-9a-fA-F]+>", "the data", str(text))
    return " ".join(text.split())


def printable(name: str) -> str:
    """An archive member's name as it may appear in a one-line message: control characters
    (a hostile archive may put newlines in a name) are shown escaped."""
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in name)


def reason(exc: BaseException) -> str:
    """An exception as words: its message on one line, or what its type means when it has none."""
    if isinstance(exc, MemoryError):
        return "it asks for more memory than there is"
    return one_line(str(exc)) or {
        EOFError: "it ends early",
        KeyError: "a key is missing",
        IndexError: "an index is out of range",
        RecursionError: "it is nested too deeply",
    }.get(type(exc), f"a {type(exc).__name__} with no message")


def size_words(n: int) -> str:
    return f"{n:,} bytes"


def read_capped(stream: BinaryIO, cap: int, where, what: str) -> bytes:
    """At most cap bytes of stream; CorruptData when it holds more (read: cap + 1 bytes)."""
    data = stream.read(cap + 1)
    if len(data) > cap:
        raise CorruptData(where, f"holds more than {size_words(cap)}; {what}")
    return data


def read_file(path: Path, cap: int, what: str) -> bytes:
    """The bytes of a regular file, refused by its size before reading when over cap (and the
    read capped too, should the file grow meanwhile)."""
    path = Path(path)
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO or a device never ends
            raise CorruptData(path, f"is not a regular file; {what}")
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > cap:
                raise CorruptData(path, f"is {size_words(size)}; {what}")
            return read_capped(f, cap, path, what)
    except OSError as exc:
        raise CorruptData(path, f"unreadable ({one_line(exc.strerror or str(exc))})") from exc


def read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, cap: int, where, what: str) -> bytes:
    """A zip member, refused by its declared size before reading when over cap; the read itself
    is capped as well, so a header that lies about the size cannot blow memory up."""
    if info.file_size > cap:
        raise CorruptData(where, f"declares {size_words(info.file_size)} uncompressed; {what}")
    with zf.open(info) as member:
        return read_capped(member, cap, where, what)

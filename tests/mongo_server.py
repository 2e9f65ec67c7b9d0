"""A real MongoDB-wire server for tests: SecantusDB's `secantusd-py` (WiredTiger storage) run as
a subprocess on a loopback port it binds itself (port 0), with its data in a temp folder."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

HOST = "127.0.0.1"


def server_command() -> list[str] | None:
    """How to start secantusd-py from this interpreter's environment, or None if absent."""
    here = Path(sys.executable).parent / "secantusd-py"
    if here.exists():
        return [str(here)]
    found = shutil.which("secantusd-py")
    return [found] if found else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class MongoServer:
    """One secantusd-py process; `url` stays the same across stop/kill and start."""

    def __init__(self, storage: Path, port: int | None = None, args: tuple[str, ...] = ()):
        self.storage = Path(storage)
        self.args = tuple(args)  # e.g. ("--auth",): clients must authenticate (SCRAM)
        # None: the first start binds port 0 and reads the port the server got from its log
        # (a port picked here could be taken before the server binds it); restarts keep it.
        self.port = port
        self.proc: subprocess.Popen | None = None
        self.log = self.storage.parent / f"secantusd-{self.storage.name}.log"

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("the server has not started: its port is not known yet")
        return f"mongodb://{HOST}:{self.port}"

    def start(self, timeout: float = 60) -> MongoServer:
        command = server_command()
        if command is None:
            raise RuntimeError("secantusd-py not found: pip install secantusdb==0.7.0b3")
        self.storage.mkdir(parents=True, exist_ok=True)
        offset = self.log.stat().st_size if self.log.exists() else 0
        with open(self.log, "ab") as log:
            # INFO: the server's one info line says which port it listens on.
            self.proc = subprocess.Popen(
                [*command, "--host", HOST, "--port", str(self.port or 0),
                 "--storage-path", str(self.storage), "--log-level", "INFO", *self.args],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        if self.port is None:
            self.port = self._bound_port(offset, timeout)
        self.wait_ready(timeout)
        return self

    def _bound_port(self, offset: int, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while True:
            with open(self.log, "rb") as log:
                log.seek(offset)
                said = log.read().decode(errors="replace")
            found = re.search(r"secantus listening on [^\s:]+:(\d+)", said)
            if found:
                return int(found.group(1))
            if self.proc.poll() is not None:
                raise RuntimeError(f"secantusd-py exited {self.proc.returncode}: {self.tail()}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"secantusd-py: no port in {timeout} s: {self.tail()}")
            time.sleep(0.05)

    def wait_ready(self, timeout: float) -> None:
        import pymongo

        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"secantusd-py exited {self.proc.returncode}: {self.tail()}")
            try:
                with pymongo.MongoClient(self.url, serverSelectionTimeoutMS=500) as client:
                    client.admin.command("ping")
                return
            except pymongo.errors.PyMongoError as exc:
                if time.monotonic() > deadline:
                    self.kill()
                    raise RuntimeError(
                        f"secantusd-py: no ping in {timeout} s: {self.tail()}"
                    ) from exc
                time.sleep(0.1)

    def tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def stop(self, timeout: float = 20) -> None:
        """A clean shutdown (SIGTERM), then SIGKILL if it lingers."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """The server dies at once (SIGKILL), as on a crash or a lost machine."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def restart(self, timeout: float = 60) -> MongoServer:
        self.stop()
        return self.start(timeout)

    def client(self, **kwargs):
        import pymongo

        return pymongo.MongoClient(self.url, serverSelectionTimeoutMS=5000, **kwargs)


def _needs_server():
    import pytest

    return pytest.mark.skipif(server_command() is None, reason="secantusd-py not installed")


# Marks a test that starts the server (the `server` fixture of conftest.py).
needs_server = _needs_server()

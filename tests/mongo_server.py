"""A real MongoDB-wire server for tests: SecantusDB's `secantusd-py` (WiredTiger storage) run as
a subprocess on a free loopback port, with its data in a temp folder."""

from __future__ import annotations

import os
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
        self.port = port or free_port()
        self.url = f"mongodb://{HOST}:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.log = self.storage.parent / f"secantusd-{self.port}.log"

    def start(self, timeout: float = 60) -> MongoServer:
        command = server_command()
        if command is None:
            raise RuntimeError("secantusd-py not found: pip install secantusdb==0.7.0b3")
        self.storage.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [*command, "--host", HOST, "--port", str(self.port),
                 "--storage-path", str(self.storage), "--log-level", "WARNING", *self.args],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        self.wait_ready(timeout)
        return self

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

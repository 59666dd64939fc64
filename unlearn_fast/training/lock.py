"""One run per output folder: a lock file naming the process that holds the folder.

``output_dir/.unlearn_fast.lock`` holds ``{"pid", "host", "started"}``, created exclusively
(``O_EXCL``). A second run on the same folder is refused with an error naming the holder;
a lock whose process no longer exists (same host, pid gone) is taken over with a warning.
A lock from another host cannot be checked and is never taken over.
"""

from __future__ import annotations

import json
import os
import socket
import time
import warnings
from pathlib import Path

LOCK_FILE = ".unlearn_fast.lock"


class OutputInUseError(ValueError):
    """Another live process holds the output folder."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class RunLock:
    def __init__(self, output_dir):
        self.path = Path(output_dir) / LOCK_FILE
        self.held = False

    def _mine(self) -> dict:
        return {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            self._take_over_or_refuse()
            return
        with os.fdopen(fd, "w") as f:
            json.dump(self._mine(), f)
        self.held = True

    def _take_over_or_refuse(self) -> None:
        try:
            holder = json.loads(self.path.read_text())
            pid, host = int(holder["pid"]), str(holder["host"])
        except (OSError, ValueError, KeyError, TypeError):
            holder, pid, host = {}, None, None
        here = socket.gethostname()
        if pid is not None and (host != here or _alive(pid)):
            raise OutputInUseError(
                f"output_dir: {str(self.path.parent)!r} is in use by process {pid} on {host} (since "
                f"{holder.get('started', '?')}); wait for it to finish, or choose another output_dir "
                f"(if that process is gone, delete {self.path})")
        what = f"process {pid} on {host}, which no longer exists" if pid is not None else "an unreadable lock file"
        warnings.warn(f"output_dir: taking over {self.path} left by {what}", stacklevel=3)
        tmp = self.path.with_name(f"{LOCK_FILE}.{os.getpid()}")
        tmp.write_text(json.dumps(self._mine()))
        os.replace(tmp, self.path)
        if json.loads(self.path.read_text()).get("pid") != os.getpid():  # another run took it first
            raise OutputInUseError(f"output_dir: {str(self.path.parent)!r} was taken by another run just now")
        self.held = True

    def release(self) -> None:
        if not self.held:
            return
        try:
            if json.loads(self.path.read_text()).get("pid") == os.getpid():
                self.path.unlink()
        except (OSError, ValueError):
            pass
        self.held = False

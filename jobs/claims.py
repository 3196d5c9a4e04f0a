"""Claims: which process does a unit of work when several run the same job at once (two sweeps of one spec,
two `cascade score` of one config and output).

A claim is an exclusive lock (``filelock``: ``flock`` on POSIX) on ``<root>/<key>.lock``, taken before the
work starts and released once its result is written. A process skips what another one holds. The operating
system drops the locks of a process that dies, so a dead process's claims never block a rerun; the lock
files themselves are empty and may stay.
"""

from __future__ import annotations

from pathlib import Path


class Claims:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.held: dict = {}
        self.made: list[Path] = []  # folders the claims created (for discard), outermost first

    def try_claim(self, key: str) -> bool:
        """Take ``key`` now (no waiting); False when another process holds it. ``key`` may hold ``/``."""
        from filelock import FileLock, Timeout

        path = self.root / f"{key}.lock"
        missing = [d for d in (path.parent, *path.parent.parents) if not d.exists()]
        path.parent.mkdir(parents=True, exist_ok=True)
        self.made.extend(reversed(missing))
        lock = FileLock(path)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            return False
        self.held[key] = lock
        return True

    def release(self, key: str) -> None:
        lock = self.held.pop(key, None)
        if lock is not None:
            lock.release()

    def release_all(self) -> None:
        for key in list(self.held):
            self.release(key)

    def discard(self) -> None:
        """Undo the claims of work that will not start (a job refused before it began): release them, delete
        their lock files and the folders they created when empty, so a refused job leaves nothing behind."""
        for key in list(self.held):
            path = self.root / f"{key}.lock"
            self.release(key)
            path.unlink(missing_ok=True)
        for d in reversed(self.made):
            try:
                d.rmdir()  # only when empty: another run's claims or records stay
            except OSError:
                pass
        self.made = []

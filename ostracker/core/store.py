"""The job DB: JSON files in a private state directory, safe for many writers.

Its files and formats are described in ``records``.

Why this shape: one event (a task starting or ending) writes one small file, so
its cost does not grow with the array; a record is replaced by writing a
temporary file, fsync-ing it and renaming it over the old one, so a reader
never sees half a record; ``job.json`` is never replaced, so an flock on it is
the job's mutation lock; and a reaper that dies drops its lock, which readers
detect.  Deleting a job renames its directory out of the way first, so a
reader sees the whole job or none of it.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
from collections.abc import Iterable
from contextlib import contextmanager

from .errors import JobNotFound, StorageError
from .records import HEADER, REAPER_LOCK

JOBS = "jobs"

_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC


def default_state_dir() -> str:
    """``$OSTRACKER_STATE_DIR``, else the platform's per-user state directory."""
    override = os.environ.get("OSTRACKER_STATE_DIR")
    if override:
        return override
    import platformdirs  # only here: a user who sets the variable never pays for it

    return platformdirs.user_state_dir("ostracker")


def _describe(exc: OSError) -> str:
    return exc.strerror or str(exc)


class Store:
    """Files of one state directory.  Knows paths and atomicity, not job semantics."""

    def __init__(self, root: str | None = None, flusher: "Flusher | None" = None):
        self.root = os.path.abspath(root or default_state_dir())
        self.flusher = flusher
        self.jobs = os.path.join(self.root, JOBS)
        self._ensure_private_dir(self.root)
        self._ensure_private_dir(self.jobs)

    # -- directories -------------------------------------------------------

    @staticmethod
    def _ensure_private_dir(path: str) -> None:
        """Create ``path`` 0700, or check that an existing one is ours and private.

        Job records hold environments, which may carry secrets: a directory that
        another user owns or may write into is refused rather than used.
        """
        try:
            os.makedirs(path, mode=0o700, exist_ok=True)
            info = os.lstat(path)
        except OSError as exc:
            raise StorageError(f"cannot use state directory {path}: {_describe(exc)}") from None
        if not os.path.isdir(path) or os.path.islink(path):
            raise StorageError(f"state directory {path} is not a directory")
        if info.st_uid != os.getuid():
            raise StorageError(f"state directory {path} belongs to another user (uid {info.st_uid})")
        if info.st_mode & 0o022:
            raise StorageError(f"state directory {path} is writable by others "
                               f"(mode {info.st_mode & 0o777:o}): refusing to use it")
        if info.st_mode & 0o077:
            try:
                os.chmod(path, 0o700)  # ours, and only readable by others: close it
            except OSError as exc:
                raise StorageError(f"cannot make state directory {path} private: "
                                   f"{_describe(exc)}") from None

    def job_dir(self, job_id: int) -> str:
        return f"{self.jobs}/{job_id}"

    def job_ids(self) -> list[int]:
        """IDs of every job directory, ascending (unknown names are ignored)."""
        try:
            names = os.listdir(self.jobs)
        except OSError as exc:
            raise StorageError(f"cannot list {self.jobs}: {_describe(exc)}") from None
        return sorted(int(name) for name in names if name.isdigit() and name.isascii())

    # -- records -----------------------------------------------------------

    def path(self, job_id: int, name: str) -> str:
        return f"{self.jobs}/{job_id}/{name}"  # the reaper asks for paths per task event

    def read(self, job_id: int, name: str) -> dict | None:
        """The record ``name`` of job ``job_id``, or None if it does not exist.

        A record that exists but does not parse raises StorageError naming it:
        damage is reported, never mistaken for absence.
        """
        data = self.read_bytes(job_id, name)
        if data is None:
            return None
        try:
            record = json.loads(data)
        except (ValueError, RecursionError):  # RecursionError: nested thousands deep
            record = None
        if not isinstance(record, dict):
            raise StorageError(f"damaged record {self.path(job_id, name)}")
        return record

    def read_bytes(self, job_id: int, name: str) -> bytes | None:
        """The file ``name`` of job ``job_id`` as bytes, or None if it does not exist."""
        path = self.path(job_id, name)
        try:
            fd = os.open(path, _READ_FLAGS)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StorageError(f"cannot read {path}: {_describe(exc)}") from None
        try:
            chunks = []
            while chunk := os.read(fd, 1 << 20):
                chunks.append(chunk)
        except OSError as exc:
            raise StorageError(f"cannot read {path}: {_describe(exc)}") from None
        finally:
            os.close(fd)
        return b"".join(chunks)

    def write(self, job_id: int, name: str, record: dict, durable: bool = True) -> None:
        """Replace record ``name`` atomically: temp file, fsync, rename.

        On any failure (ENOSPC, EIO) the previous record is left as it was and
        the temporary file is removed.  ``durable=False`` skips the fsync, for
        transitions that a reboot would make meaningless anyway (Running,
        Suspended): the rename alone already keeps readers from seeing half a
        file.  With a flusher, a durable record is fsync'd behind the writer.
        """
        self.write_chunks(job_id, name, [json.dumps(record).encode()], durable)

    def write_chunks(self, job_id: int, name: str, chunks: Iterable[bytes],
                     durable: bool = True) -> None:
        path = self.path(job_id, name)
        write_atomically(path, chunks, durable and self.flusher is None)
        if durable and self.flusher is not None:
            self.flusher.add(path)

    def create_job_dir(self, job_id: int) -> None:
        try:
            os.mkdir(self.job_dir(job_id), 0o700)
        except OSError as exc:
            raise StorageError(f"cannot create {self.job_dir(job_id)}: {_describe(exc)}") from None

    def remove_job_dir(self, job_id: int) -> None:
        """Remove a job whole: rename it away first, so no reader sees half of it."""
        doomed = os.path.join(self.jobs, f".deleted-{job_id}-{os.getpid()}")
        try:
            os.rename(self.job_dir(job_id), doomed)
        except FileNotFoundError:
            raise JobNotFound(f"no such job: {job_id}") from None
        except OSError as exc:
            raise StorageError(f"cannot delete job {job_id}: {_describe(exc)}") from None
        import shutil  # only here: it costs a CLI start more than any other import of ours

        shutil.rmtree(doomed, ignore_errors=True)

    # -- locks -------------------------------------------------------------

    @contextmanager
    def job_lock(self, job_id: int):
        """Exclusive lock on one job's records (flock on its never-replaced header)."""
        path = self.path(job_id, HEADER)
        try:
            fd = os.open(path, _READ_FLAGS)
        except FileNotFoundError:
            raise JobNotFound(f"no such job: {job_id}") from None
        except OSError as exc:
            raise StorageError(f"cannot open {path}: {_describe(exc)}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def open_reaper_lock(self, job_id: int) -> int:
        """Create and take the lock that says "this job's reaper is alive"; return its fd."""
        fd = os.open(self.path(job_id, REAPER_LOCK),
                     os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        return fd

    def reaper_alive(self, job_id: int) -> bool:
        """Whether the job's reaper still holds its lock.

        The submitter creates the lock file, already taken, before it writes the
        job's header, so a visible job without a lock file has no reaper.
        """
        try:
            fd = os.open(self.path(job_id, REAPER_LOCK), _READ_FLAGS)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False

    # -- IDs ---------------------------------------------------------------

    def allocate_id(self) -> int:
        """Hand out the next job ID, never given before, and create its directory.

        The counter is read and bumped under an exclusive flock on ``lock``, so
        concurrent submitters from shells and cron never get the same ID.  The
        highest ID is kept twice — in ``last-id`` and in the lock file itself —
        and the highest job directory is a third floor: losing or damaging one
        of them (a crash, a careless ``rm``) cannot make an ID come back.
        """
        lock_path = os.path.join(self.root, "lock")
        try:
            lock_fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                              0o600)
        except OSError as exc:
            raise StorageError(f"cannot open {lock_path}: {_describe(exc)}") from None
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            counter = os.path.join(self.root, "last-id")
            kept = _read_int(counter)
            copy = _parse_int(os.pread(lock_fd, 32, 0))
            last = max(kept or 0, copy or 0)
            if kept is None or kept != copy:  # one copy lost or damaged: scan the jobs too
                last = max(last, max(self.job_ids(), default=0))
            job_id = last + 1
            while os.path.lexists(self.job_dir(job_id)):
                job_id += 1  # a directory the counter does not know of: never reuse it
            # Not fsync'd here: the job's header is (by its reaper).
            write_atomically(counter, [b"%d\n" % job_id], durable=False)
            os.pwrite(lock_fd, b"%-31d\n" % job_id, 0)
            self.create_job_dir(job_id)
            return job_id
        except OSError as exc:
            raise StorageError(f"cannot allocate a job ID in {self.root}: {_describe(exc)}") \
                from None
        finally:
            os.close(lock_fd)


class Flusher:
    """fsyncs files in a background thread, so that the reaper's loop never waits on the disk.

    A path is fsync'd after its rename.  On ext4 (data=ordered) the journal
    commit that the first fsync of a burst forces carries the other pending
    files too, so a burst of task results costs about one flush, not one each.
    ``drain`` returns once everything handed over is on disk; the reaper drains
    before it exits, so a job's result is durable by the time ``wait`` returns.
    Results wait up to ``WINDOW`` seconds for others to share their flush.
    """

    WINDOW = 0.05

    def __init__(self):
        import threading

        self._pending: list[str] = []
        self._busy = False
        self._draining = False
        self._changed = threading.Condition()
        threading.Thread(target=self._run, name="flusher", daemon=True).start()

    def add(self, path: str) -> None:
        with self._changed:
            self._pending.append(path)
            if len(self._pending) == 1:  # the thread sleeps only while nothing is pending
                self._changed.notify_all()

    def drain(self) -> None:
        with self._changed:
            self._draining = True
            self._changed.notify_all()
            self._changed.wait_for(lambda: not self._pending and not self._busy)
            self._draining = False

    def _run(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._pending)
                self._busy = True
                # Group commit: let a burst of results gather, unless someone waits.
                self._changed.wait_for(lambda: self._draining, timeout=self.WINDOW)
                batch, self._pending = self._pending, []
            for path in dict.fromkeys(batch):
                try:
                    fd = os.open(path, _READ_FLAGS)
                    try:
                        os.fsync(fd)
                    finally:
                        os.close(fd)
                except OSError:
                    pass  # gone (deleted) or failing: nobody is left to tell
            with self._changed:
                self._busy = False
                self._changed.notify_all()


def _read_int(path: str) -> int | None:
    """The number in file ``path`` (never through a symlink), or None."""
    try:
        fd = os.open(path, _READ_FLAGS)
    except OSError:
        return None
    try:
        return _parse_int(os.read(fd, 64))
    finally:
        os.close(fd)


def _parse_int(data: bytes) -> int | None:
    try:
        return int(data)
    except ValueError:
        return None


def write_atomically(path: str, chunks: Iterable[bytes], durable: bool) -> None:
    """Write ``chunks`` to ``path`` through a private temporary file and a rename."""
    directory, name = os.path.split(path)
    tmp = f"{directory}/.{name}.{os.getpid()}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)
        try:
            for chunk in chunks:
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view):]
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
    except OSError as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if exc.errno == errno.ENOENT and not os.path.isdir(directory):
            raise JobNotFound(f"job directory {directory} is gone") from None
        raise StorageError(f"cannot write {path}: {_describe(exc)}") from None

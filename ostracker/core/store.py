"""The job DB: JSON files in a private state directory, safe for many writers.

Its files and formats are described in ``records``.

Why this shape: one event (a task starting or ending) writes one small file, or
appends one line to its array's log (``tasklog``), so its cost does not grow
with the array; a record is replaced by writing a temporary file, fsync-ing it
and renaming it over the old one, and a line is appended whole or not at all
(``append_line``), so a reader never sees half a record; ``job.json`` is never
replaced, so an flock on it is the job's mutation lock; and a reaper that dies
drops its lock, which readers detect.  Deleting a job renames its directory out
of the way first, so a reader sees the whole job or none of it.

Files are reached through directory descriptors, never by path from the
root each time (``os.open(name, dir_fd=...)``): the state directory and its
``jobs/`` are opened once per Store, and so is the directory of the job that
a Store created, or of every job that a reaper's Store (one with a
``Flusher``) touches; any other job's directory is held until the next job's
is needed.  So a
reaper whose state directory is moved (``mv``) while its job runs goes on
writing into the moved directory, never into one created at the old path.
A descriptor is checked (``fstat``: the same device and inode) before each
use, because a forked reaper closes every descriptor it does not know of;
one closed behind our back is opened again by name, and refused if the name
now leads to another directory.

Nothing is read or written through a symbolic link or an extra hard link:
every open has ``O_NOFOLLOW``, a file that is read or locked must be a regular
file with one link, temporary files are created with ``O_EXCL`` under a
random name, and directories are opened with ``O_NOFOLLOW | O_DIRECTORY``.

Nothing is created before the first write: a Store over a directory that does
not exist (or has no ``jobs/``) reads as an empty DB, and a reader never
creates, changes or chmods anything.  ``allocate_id`` creates the state
directory, each missing parent and ``jobs/`` 0700 and closes an existing one
that others may read; every file is created 0600, whatever the umask.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import stat
from collections.abc import Iterable
from contextlib import contextmanager

from .errors import JobNotFound, StorageError
from .models import MAX_DIGITS
from .records import HEADER, REAPER_LOCK, TASK_LOG, task_record_name

JOBS = "jobs"
LOCK = "lock"
COUNTER = "last-id"
# The largest ID believed: a counter (or job directory) above it is damage, not a job
# (a million IDs a second would take 30 years to get there).
MAX_ID = 10 ** 15
# Seconds after which what a crashed writer left is swept by ``sweep_leftovers``:
# a job directory without a header, a stray temporary file.  A submit writes the
# header milliseconds after the directory; the Slurm backend's sbatch may take a minute.
LEFTOVER_AGE = 600.0
DELETED_PREFIX = ".deleted-"
ENDED = "ended"  # what compacted jobs keep (``history``)

_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK  # NONBLOCK: a FIFO
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_TEMP_TRIES = 64


def default_state_dir() -> str:
    """``$OSTRACKER_STATE_DIR``, else the platform's per-user state directory."""
    override = os.environ.get("OSTRACKER_STATE_DIR")
    if override:
        return override
    import platformdirs  # only here: a user who sets the variable never pays for it

    return platformdirs.user_state_dir("ostracker")


def _describe(exc: OSError) -> str:
    return exc.strerror or str(exc)


# -- descriptors of directories ------------------------------------------------------------

def _held(fd: int) -> tuple[int, int, int]:
    """(fd, st_dev, st_ino): a directory descriptor and the identity it must keep."""
    info = os.fstat(fd)
    return fd, info.st_dev, info.st_ino


def _still(entry: tuple[int, int, int]) -> bool:
    """Whether the descriptor still names the directory it was opened on, not removed."""
    fd, dev, ino = entry
    try:
        info = os.fstat(fd)
    except OSError:
        return False  # closed behind our back
    return info.st_ino == ino and info.st_dev == dev and info.st_nlink > 0


def _release(entry: tuple[int, int, int] | None) -> None:
    """Close a held descriptor, unless its number now belongs to someone else."""
    if entry is None:
        return
    fd, dev, ino = entry
    try:
        info = os.fstat(fd)
    except OSError:
        return
    if (info.st_dev, info.st_ino) == (dev, ino):
        os.close(fd)


_umask_owner: bool | None = None


def _private(fd: int) -> None:
    """Make a file we just created exactly 0600 where the umask took some of the owner's bits
    (the umask is read once per process, from /proc, never set)."""
    global _umask_owner
    if _umask_owner is None:
        _umask_owner = True
        try:
            with open("/proc/self/status", "rb") as handle:
                for line in handle:
                    if line.startswith(b"Umask:"):
                        _umask_owner = bool(int(line.split()[1], 8) & 0o600)
                        break
        except (OSError, ValueError, IndexError):
            pass
    if _umask_owner:
        os.fchmod(fd, 0o600)


def _check_file(fd: int, path: str, what: str) -> os.stat_result:
    """``fd``'s stat if it is a regular file with one link (nothing planted); else
    StorageError."""
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        raise StorageError(f"damaged {what} {path}: not a regular file")
    # 0 links: replaced by a rename since it was opened (a reader racing a writer),
    # which is fine: what was opened is a whole record.  2 or more: planted.
    if info.st_nlink > 1:
        raise StorageError(f"damaged {what} {path}: it has {info.st_nlink} hard links")
    return info


def _open_error(exc: OSError, path: str, what: str, verb: str = "read") -> StorageError:
    if exc.errno == errno.ELOOP:
        return StorageError(f"damaged {what} {path}: a symbolic link")
    return StorageError(f"cannot {verb} {path}: {_describe(exc)}")


def _job_number(name: str) -> int | None:
    """The job ID that a directory name in ``jobs/`` spells, or None for any other name."""
    if name.isdigit() and name.isascii() and name[0] != "0" and len(name) <= MAX_DIGITS:
        return int(name)
    return None


class Store:
    """Files of one state directory.  Knows paths and atomicity, not job semantics.

    ``create=True`` creates the directory at once (else the first ``allocate_id``
    does).  Holds at most four descriptors (the state directory, ``jobs/``, the
    job it created, the job it read last; a reaper's Store, each job it
    touched): ``close`` (or garbage collection) closes them.
    """

    def __init__(self, root: str | None = None, flusher: "Flusher | None" = None,
                 create: bool = False):
        self.root = os.path.abspath(root or default_state_dir())
        self.flusher = flusher
        self.jobs = os.path.join(self.root, JOBS)
        self._root: tuple[int, int, int] | None = None
        self._jobs: tuple[int, int, int] | None = None
        self._pinned: dict[int, tuple[int, int, int]] = {}  # job ID -> its directory
        self._recent: tuple[int, tuple[int, int, int]] | None = None  # the last job read
        self._history = None
        self._task_logs: dict = {}  # job ID -> its ``tasklog.TaskLog``, as last read
        if create:
            self._jobs_fd(create=True)

    def close(self) -> None:
        """Close every descriptor this Store holds (it opens them again if used)."""
        for log in self._task_logs.values():
            log.close()
        for entry in [self._root, self._jobs, *self._pinned.values(),
                      self._recent and self._recent[1]]:
            _release(entry)
        self._root = self._jobs = self._recent = None
        self._pinned = {}

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - at interpreter exit, os may be half gone
            pass

    # -- directories -------------------------------------------------------

    def _check_private(self, fd: int, path: str, fix: bool) -> None:
        """Refuse a directory that another user owns or may write into; a writer (``fix``)
        closes one that others may only read.

        Job records hold environments, which may carry secrets.
        """
        info = os.fstat(fd)
        if info.st_uid != os.getuid():
            raise StorageError(f"state directory {path} belongs to another user (uid {info.st_uid})")
        if info.st_mode & 0o022:
            raise StorageError(f"state directory {path} is writable by others "
                               f"(mode {info.st_mode & 0o777:o}): refusing to use it")
        if fix and info.st_mode & 0o077:
            try:
                os.fchmod(fd, 0o700)  # ours, and only readable by others: close it
            except OSError as exc:
                raise StorageError(f"cannot make state directory {path} private: "
                                   f"{_describe(exc)}") from None

    def _root_fd(self, create: bool = False) -> int | None:
        """The state directory, opened (and with ``create``, made) and checked; None if it
        does not exist and ``create`` is false."""
        if self._root is not None:
            if _still(self._root):
                if create:
                    self._check_private(self._root[0], self.root, True)
                return self._root[0]
            _release(self._root)
            self._root = None
        try:
            fd = os.open(self.root, _DIR_FLAGS)
        except FileNotFoundError:
            if not create:
                return None
            fd = self._make_root()
        except OSError as exc:
            raise self._dir_error(exc, self.root) from None
        try:
            self._check_private(fd, self.root, create)
            self._root = _held(fd)
        except BaseException:
            os.close(fd)
            raise
        return fd

    @staticmethod
    def _dir_error(exc: OSError, path: str) -> StorageError:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            return StorageError(f"state directory {path} is not a directory")
        return StorageError(f"cannot use state directory {path}: {_describe(exc)}")

    def _make_root(self) -> int:
        """Create the state directory and each missing parent 0700 (whatever the umask,
        so that no other user may rename it away); return its descriptor."""
        missing = []
        head = self.root
        while True:
            try:
                os.lstat(head)
                break
            except FileNotFoundError:
                missing.append(os.path.basename(head))
                parent = os.path.dirname(head)
                if parent == head:
                    break
                head = parent
            except OSError as exc:
                raise self._dir_error(exc, head) from None
        try:
            fd = os.open(head, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)  # an existing parent
        except OSError as exc:
            raise self._dir_error(exc, head) from None
        try:
            for name in reversed(missing):
                head = os.path.join(head, name)
                child = _make_dir(fd, name, head)
                os.close(fd)
                fd = child
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _jobs_fd(self, create: bool = False) -> int | None:
        """``jobs/``, opened and checked (with ``create``, made); None if it does not exist."""
        if self._jobs is not None and _still(self._jobs):
            if create:
                self._root_fd(True)  # a writer: the state directory is closed, if need be
                self._check_private(self._jobs[0], self.jobs, True)
            return self._jobs[0]
        _release(self._jobs)
        self._jobs = None
        root = self._root_fd(create)
        if root is None:
            return None
        try:
            fd = os.open(JOBS, _DIR_FLAGS, dir_fd=root)
        except FileNotFoundError:
            if not create:
                return None
            fd = _make_dir(root, JOBS, self.jobs)
        except OSError as exc:
            raise self._dir_error(exc, self.jobs) from None
        try:
            self._check_private(fd, self.jobs, create)
            self._jobs = _held(fd)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _open_job(self, job_id: int) -> int | None:
        """A new descriptor of the job's directory, or None if there is none."""
        jobs = self._jobs_fd()
        if jobs is None:
            return None
        try:
            return os.open(str(job_id), _DIR_FLAGS, dir_fd=jobs)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise StorageError(f"damaged job directory {self.job_dir(job_id)}: "
                                   "not a directory") from None
            raise StorageError(f"cannot open {self.job_dir(job_id)}: {_describe(exc)}") from None

    def _job_fd(self, job_id: int) -> int | None:
        """A descriptor of the job's directory, held by this Store (never to be closed by
        the caller), or None if the job has no directory.

        A pinned directory (the job this Store created; every job of a reaper's
        Store) is used wherever it has been moved to; one that was closed behind
        our back is opened again by name, and refused if that name now leads to
        another directory.  Any other job's directory is held until another job's
        is asked for: a listing opens each job's directory once, and a Store holds
        one such descriptor at most.
        """
        entry = self._pinned.get(job_id)
        if entry is not None:
            if _still(entry):
                return entry[0]
            del self._pinned[job_id]
            fd = self._open_job(job_id)
            if fd is None:
                return None
            again = _held(fd)
            if again[1:] != entry[1:]:
                os.close(fd)
                raise StorageError(f"job directory {self.job_dir(job_id)} was moved or "
                                   "replaced while this process used it")
            self._pinned[job_id] = again
            return fd
        recent = self._recent
        if recent is not None:
            if recent[0] == job_id and _still(recent[1]):
                return recent[1][0]
            self._recent = None
            _release(recent[1])
        fd = self._open_job(job_id)
        if fd is None:
            return None
        if self.flusher is not None:  # a reaper's Store: it keeps its job's directory
            self._pinned[job_id] = _held(fd)
        else:
            self._recent = (job_id, _held(fd))
        return fd

    def _pin(self, job_id: int, fd: int) -> None:
        """Hold the directory of a job this Store created (only the latest one, unless this
        is a reaper's Store)."""
        if self.flusher is None:
            for entry in self._pinned.values():
                _release(entry)
            self._pinned = {}
        if self._recent is not None and self._recent[0] == job_id:
            _release(self._recent[1])
            self._recent = None
        self._pinned[job_id] = _held(fd)

    def _unpin(self, job_id: int) -> None:
        _release(self._pinned.pop(job_id, None))
        if self._recent is not None and self._recent[0] == job_id:
            _release(self._recent[1])
            self._recent = None

    def job_dir_fd(self, job_id: int) -> int:
        """A descriptor of the job's directory that this Store holds (do not close it):
        for ``os.*(name, dir_fd=...)`` or a ``/proc/self/fd/N/name`` path that must reach
        this job's directory wherever the state directory is moved.  JobNotFound if the
        job has no directory."""
        fd = self._job_fd(job_id)
        if fd is None:
            raise JobNotFound(f"no such job: {job_id}")
        if job_id not in self._pinned:
            self._pin(job_id, os.dup(fd))
        return self._pinned[job_id][0]

    def hold_job_dir(self, job_id: int, fd: int) -> None:
        """Adopt ``fd`` (inherited across an exec, say) as the job's directory: every later
        operation on the job goes there, even if the state directory was moved before."""
        try:
            info = os.fstat(fd)
        except OSError as exc:
            raise StorageError(f"cannot use the directory of job {job_id}: "
                               f"{_describe(exc)}") from None
        if not stat.S_ISDIR(info.st_mode):
            raise StorageError(f"cannot use the directory of job {job_id}: not a directory")
        self._pinned[job_id] = _held(fd)

    def job_dir(self, job_id: int) -> str:
        return f"{self.jobs}/{job_id}"

    @property
    def history(self):
        """The ended jobs (``history.History``), read once per Store and then as it grows."""
        if self._history is None:
            from .history import History

            self._history = History(self)
        return self._history

    def at_home(self, job_id: int) -> bool:
        """Whether the job's directory that this Store reads from is still ``jobs/N``: a
        job compacted (or deleted) while it was read is read again from the history."""
        fd = self._job_fd(job_id)
        jobs = self._jobs_fd()
        if fd is None or jobs is None:
            return False
        try:
            there = os.stat(str(job_id), dir_fd=jobs, follow_symlinks=False)
            here = os.fstat(fd)
        except OSError:
            return False
        return (there.st_dev, there.st_ino) == (here.st_dev, here.st_ino)

    def job_ids(self) -> list[int]:
        """IDs of every job directory, ascending (unknown names are ignored).  No state
        directory, or no ``jobs/`` in it: an empty DB."""
        jobs = self._jobs_fd()
        if jobs is None:
            return []
        try:
            names = os.listdir(jobs)
        except OSError as exc:
            raise StorageError(f"cannot list {self.jobs}: {_describe(exc)}") from None
        return sorted(number for number in map(_job_number, names) if number is not None)

    # -- records -----------------------------------------------------------

    def path(self, job_id: int, name: str) -> str:
        return f"{self.jobs}/{job_id}/{name}"  # the reaper asks for paths per task event

    def ended_path(self, job_id: int, name: str) -> str:
        """Where a compacted job keeps file ``name`` (``history``)."""
        return f"{self.root}/{ENDED}/{job_id}/{name}"

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
        """The file ``name`` of job ``job_id`` as bytes, or None if it does not exist.

        A symbolic link, or a file with another hard link, planted at the name is
        refused (StorageError), never read through.
        """
        dir_fd = self._job_fd(job_id)
        if dir_fd is None:
            return None
        return _read_at(dir_fd, name, self.path(job_id, name))

    def exists(self, job_id: int, name: str) -> bool:
        """Whether the job has an entry ``name`` (of any kind; a link is not followed)."""
        dir_fd = self._job_fd(job_id)
        if dir_fd is None:
            return False
        try:
            os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            return True
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise StorageError(f"cannot read {self.path(job_id, name)}: {_describe(exc)}") \
                from None

    def open_captured(self, job_id: int, name: str, ended: bool = False) -> int:
        """Open output captured in the job's directory (``ended``: in what a compacted
        job kept, ``ended/N``) for reading; return the descriptor.

        FileNotFoundError if it is not there (yet); StorageError if what is there
        is a link planted at its name or not a regular file.
        """
        path = self.ended_path(job_id, name) if ended else self.path(job_id, name)
        if ended:
            area = self._area(ENDED)
            try:
                dir_fd = None if area is None else os.open(str(job_id), _DIR_FLAGS,
                                                            dir_fd=area)
            except FileNotFoundError:
                dir_fd = None
            except OSError as exc:
                raise _open_error(exc, path, "output file") from None
            finally:
                if area is not None:
                    os.close(area)
        else:
            dir_fd = self._job_fd(job_id)
        if dir_fd is None:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)
        try:
            fd = os.open(name, _READ_FLAGS, dir_fd=dir_fd)
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise _open_error(exc, path, "output file") from None
        finally:
            if ended:
                os.close(dir_fd)
        try:
            _check_file(fd, path, "output file")
            os.set_blocking(fd, True)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def open_file(self, job_id: int, name: str, flags: int, mode: int = 0o600) -> int:
        """``os.open`` of the job's file ``name``, relative to the job's (held) directory,
        never through a link (``O_NOFOLLOW``); a file that was there already must be a
        regular file with one link (one that ``O_EXCL`` created is new: nothing to check),
        and one created is private.  Raises OSError as ``os.open`` does (JobNotFound if the
        job's directory is gone), StorageError for a planted link."""
        dir_fd = self._job_fd(job_id)
        path = self.path(job_id, name)
        if dir_fd is None:
            raise JobNotFound(f"job directory {self.job_dir(job_id)} is gone")
        try:
            fd = os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise StorageError(f"damaged file {path}: a symbolic link") from None
            raise
        try:
            if not flags & os.O_EXCL:
                _check_file(fd, path, "file")
            if flags & os.O_CREAT:
                _private(fd)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def reuse_empty_file(self, job_id: int, spare: str, name: str) -> int | None:
        """Move the job's empty file ``spare`` to ``name`` (which must not exist) and open
        it for appending, checked as ``open_file`` checks: a file without the cost of a
        new inode (README, "Design", *Captured output*).  None if ``spare`` is gone or
        not empty, or something is at ``name`` already."""
        dir_fd = self._job_fd(job_id)
        if dir_fd is None:
            return None
        try:
            found = os.stat(spare, dir_fd=dir_fd, follow_symlinks=False)
        except OSError:
            return None
        if not stat.S_ISREG(found.st_mode) or found.st_size:
            return None
        try:  # a link and an unlink: a rename would replace what is at ``name``
            os.link(spare, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
        except OSError:
            return None
        try:
            os.unlink(spare, dir_fd=dir_fd)
        except OSError:
            try:
                os.unlink(name, dir_fd=dir_fd)  # (two links: the file would be refused)
            except OSError:
                pass
            return None
        try:
            fd = self.open_file(job_id, name, os.O_WRONLY | os.O_APPEND | os.O_NONBLOCK)
        except (OSError, StorageError):
            return None  # (what is at ``name`` is then opened as any file found there)
        os.set_blocking(fd, True)
        return fd

    def names_file(self, job_id: int, name: str, fd: int) -> bool:
        """Whether the job's ``name`` (in ``jobs/N``, or in ``ended/N`` once it was
        compacted) is still the file open as ``fd``."""
        opened = os.fstat(fd)
        for path in (self.path(job_id, name), self.ended_path(job_id, name)):
            try:
                found = os.stat(path, follow_symlinks=False)
            except OSError:
                continue
            return (found.st_dev, found.st_ino) == (opened.st_dev, opened.st_ino)
        return False

    def unlink(self, job_id: int, name: str) -> None:
        """Remove the job's entry ``name``; nothing if it is not there."""
        dir_fd = self._job_fd(job_id)
        if dir_fd is None:
            return
        try:
            os.unlink(name, dir_fd=dir_fd)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise StorageError(f"cannot remove {self.path(job_id, name)}: {_describe(exc)}") \
                from None

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
        dir_fd = self._job_fd(job_id)
        if dir_fd is None:
            raise JobNotFound(f"job directory {self.job_dir(job_id)} is gone")
        _write_at(dir_fd, name, chunks, durable and self.flusher is None, self.path(job_id, name))
        if durable and self.flusher is not None:
            self.flusher.add((dir_fd, name))  # the directory is held for good: see _job_fd

    def flush_later(self, job_id: int, name: str) -> None:
        """Have the flusher fsync the job's file ``name`` (written without an fsync)."""
        dir_fd = self._job_fd(job_id)
        if dir_fd is None:
            return
        if self.flusher is None:
            try:
                _fsync_at(dir_fd, name)
            except OSError as exc:
                raise StorageError(f"cannot write {self.path(job_id, name)}: "
                                   f"{_describe(exc)}") from None
        else:
            self.flusher.add((dir_fd, name))

    # -- task records: a single job's file, an array's log (``tasklog``) -----------

    def task_log(self, job_id: int):
        """The array's ``tasklog.TaskLog``, kept so that it is read on from where it was."""
        log = self._task_logs.get(job_id)
        if log is None:
            from .tasklog import TaskLog

            log = self._task_logs[job_id] = TaskLog(self, job_id)
        return log

    def forget_task_log(self, job_id: int) -> None:
        """Read the array's log anew, whole, next time (not only what was added since)."""
        log = self._task_logs.pop(job_id, None)
        if log is not None:
            log.close()

    def create_task_log(self, job_id: int) -> None:
        """Give a new array its (empty) log, before anything can write a task's record."""
        self.task_log(job_id).create()

    def _log_lines(self, job_id: int, index: int | None):
        """The array's log's lines, or None where the task's record is a file: a single
        job's, or an array of an earlier version (one without a log)."""
        return None if index is None else self.task_log(job_id).lines()

    def read_task(self, job_id: int, index: int | None) -> dict | None:
        """Task ``index``'s (None: the single job's) record; None if it has none;
        StorageError if it is damaged."""
        if self._log_lines(job_id, index) is not None:
            return self.task_log(job_id).read(index)
        return self.read(job_id, task_record_name(index))

    def read_tasks(self, job_id: int, indices) -> list[dict | None]:
        """``read_task`` of each of an array's ``indices``, the log read once (``read_task``
        reads on in it at every call: an open and a stat a task)."""
        log = self.task_log(job_id)
        if log.lines() is None:
            return [self.read_task(job_id, index) for index in indices]
        return [log.read(index) for index in indices]

    def has_task(self, job_id: int, index: int | None) -> bool:
        """Whether the task has a record (a damaged one too)."""
        lines = self._log_lines(job_id, index)
        if lines is not None:
            return index in lines
        return self.exists(job_id, task_record_name(index))

    def task_indices(self, job_id: int) -> list[int]:
        """The indices of the array's tasks that have a record, ascending."""
        lines = self.task_log(job_id).lines()
        if lines is not None:
            return sorted(lines)
        try:
            names = os.listdir(self.job_dir(job_id))
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise StorageError(f"cannot list {self.job_dir(job_id)}: {_describe(exc)}") \
                from None
        return sorted(int(name[:-5]) for name in names
                      if name.endswith(".json") and name[:-5].isdigit())

    def task_path(self, job_id: int, index: int | None) -> str:
        """Where the task's record is, for a message."""
        if self._log_lines(job_id, index) is not None:
            return f"{self.path(job_id, TASK_LOG)} (task {index})"
        return self.path(job_id, task_record_name(index))

    def write_task(self, job_id: int, index: int | None, record: dict,
                   durable: bool = True) -> None:
        """Record the task's new state: a line added to an array's log, else ``write``."""
        if index is not None and \
                self.task_log(job_id).append(index, record, durable and self.flusher is None):
            directory = self._job_fd(job_id)
            if durable and self.flusher is not None and directory is not None:
                self.flusher.add((directory, TASK_LOG))
            return
        self.write(job_id, task_record_name(index), record, durable)

    def create_job_dir(self, job_id: int) -> None:
        """Create the job's directory (0700) and hold it: this Store writes the job."""
        jobs = self._jobs_fd(create=True)
        self._pin(job_id, _make_dir(jobs, str(job_id), self.job_dir(job_id), exclusive=True))

    def remove_job_dir(self, job_id: int) -> None:
        """Remove a job whole: rename it away first, so no reader sees half of it."""
        jobs = self._jobs_fd()
        if jobs is None:
            raise JobNotFound(f"no such job: {job_id}")
        self._unpin(job_id)
        doomed = f"{DELETED_PREFIX}{job_id}-{os.getpid()}"
        try:
            os.rename(str(job_id), doomed, src_dir_fd=jobs, dst_dir_fd=jobs)
        except FileNotFoundError:
            raise JobNotFound(f"no such job: {job_id}") from None
        except OSError as exc:
            raise StorageError(f"cannot delete job {job_id}: {_describe(exc)}") from None
        _remove_tree(jobs, doomed)

    def sweep_leftovers(self, min_age: float = LEFTOVER_AGE) -> list[int]:
        """Remove what crashed writers left; return the IDs of the job directories removed.

        Left by a crash: a job directory without a header older than ``min_age``
        seconds (a submit killed between making it and writing the header), a
        ``.deleted-*`` directory (a delete killed half-way), a temporary file of
        the counter older than ``min_age``.  A job's own stray temporary files go
        with the job when it is deleted; readers never look at them.
        """
        import time

        jobs = self._jobs_fd()
        if jobs is None:
            return []
        now = time.time()
        removed = []
        try:
            names = os.listdir(jobs)
        except OSError as exc:
            raise StorageError(f"cannot list {self.jobs}: {_describe(exc)}") from None
        for name in names:
            if name.startswith(DELETED_PREFIX):
                _remove_tree(jobs, name)
                continue
            job_id = _job_number(name)
            if job_id is None:
                continue
            try:
                info = os.stat(name, dir_fd=jobs, follow_symlinks=False)
                if not stat.S_ISDIR(info.st_mode) or now - info.st_mtime < min_age or \
                        self.exists(job_id, HEADER):
                    continue
                self.remove_job_dir(job_id)
                removed.append(job_id)
            except (OSError, JobNotFound, StorageError):
                continue
        root = self._root_fd()
        for name in os.listdir(root) if root is not None else []:
            if name.startswith(f".{COUNTER}.") and name.endswith(".tmp"):
                try:
                    if now - os.stat(name, dir_fd=root, follow_symlinks=False).st_mtime \
                            >= min_age:
                        os.unlink(name, dir_fd=root)
                except OSError:
                    pass
        return removed

    # -- locks -------------------------------------------------------------

    def _open_lock(self, job_id: int, name: str, missing) -> int | None:
        """The job's lock file ``name`` opened for flock (never through a link), or
        ``missing()`` if it is not there."""
        dir_fd = self._job_fd(job_id)
        if dir_fd is None:
            return missing()
        path = self.path(job_id, name)
        try:
            fd = os.open(name, _READ_FLAGS, dir_fd=dir_fd)
        except FileNotFoundError:
            return missing()
        except OSError as exc:
            raise _open_error(exc, path, "record" if name == HEADER else "lock", "open") \
                from None
        try:
            _check_file(fd, path, "record" if name == HEADER else "lock")
        except BaseException:
            os.close(fd)
            raise
        return fd

    @contextmanager
    def job_lock(self, job_id: int):
        """Exclusive lock on one job's records (flock on its never-replaced header)."""
        def missing():
            raise JobNotFound(f"no such job: {job_id}")
        fd = self._open_lock(job_id, HEADER, missing)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def open_reaper_lock(self, job_id: int, existing: bool = False) -> int | None:
        """Create and take the lock that says "this job's reaper is alive"; return its fd.

        Created exclusively in the job's fresh directory: anything already there
        was planted, and is refused.  With ``existing``, the lock of a job that
        waited for the scheduler is taken instead, without blocking: None if
        its holder (a reaper) is alive.
        """
        dir_fd = self._job_fd(job_id)
        path = self.path(job_id, REAPER_LOCK)
        if dir_fd is None:
            raise JobNotFound(f"job directory {self.job_dir(job_id)} is gone")
        if existing:
            try:  # read and write: the reaper writes its PID there
                fd = os.open(REAPER_LOCK, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC,
                             dir_fd=dir_fd)
            except OSError as exc:
                raise _open_error(exc, path, "lock", "open") from None
            try:
                _check_file(fd, path, "lock")
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return None
            except BaseException:
                os.close(fd)
                raise
            return fd
        try:
            fd = os.open(REAPER_LOCK, (_CREATE_FLAGS & ~os.O_WRONLY) | os.O_RDWR, 0o600,
                         dir_fd=dir_fd)
        except OSError as exc:
            raise _open_error(exc, path, "lock", "create") from None
        try:
            _private(fd)
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as exc:
            os.close(fd)
            raise StorageError(f"cannot lock {path}: {_describe(exc)}") from None
        return fd

    def reaper_pid(self, job_id: int) -> int | None:
        """The PID that the job's reaper wrote in its lock file (None: none written, as by
        an earlier version).  Whether that reaper still lives is ``reaper_alive``'s."""
        text = (self.read_bytes(job_id, REAPER_LOCK) or b"").strip()
        return int(text) if text.isdigit() and len(text) < 10 else None

    def reaper_alive(self, job_id: int) -> bool:
        """Whether the job's reaper still holds its lock.

        The submitter creates the lock file, already taken, before it writes the
        job's header, so a visible job without a lock file has no reaper.  A link
        planted at its name is a StorageError naming it.
        """
        fd = self._open_lock(job_id, REAPER_LOCK, lambda: None)
        if fd is None:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        except OSError as exc:
            raise StorageError(f"cannot lock {self.path(job_id, REAPER_LOCK)}: "
                               f"{_describe(exc)}") from None
        finally:
            os.close(fd)
        return False

    # -- registers: a directory of names (the DRMAA2 job sessions) ---------------

    def _area(self, area: str, create: bool = False) -> int | None:
        """A new descriptor of the state directory's ``area``/ (made with ``create``)."""
        root = self._root_fd(create)
        if root is None:
            return None
        try:
            return os.open(area, _DIR_FLAGS, dir_fd=root)
        except FileNotFoundError:
            if not create:
                return None
            return _make_dir(root, area, os.path.join(self.root, area))
        except OSError as exc:
            raise self._dir_error(exc, os.path.join(self.root, area)) from None

    def names_in(self, area: str) -> list[str]:
        """The names registered in ``area``, sorted; none if it does not exist."""
        fd = self._area(area)
        if fd is None:
            return []
        try:
            return sorted(name for name in os.listdir(fd) if not name.startswith("."))
        finally:
            os.close(fd)

    def register(self, area: str, name: str) -> bool:
        """Register ``name`` in ``area`` (an empty private file, created exclusively);
        False if it was registered already."""
        fd = self._area(area, create=True)
        try:
            os.close(os.open(name, _CREATE_FLAGS, 0o600, dir_fd=fd))
            return True
        except FileExistsError:
            return False
        except OSError as exc:
            raise _open_error(exc, os.path.join(self.root, area, name), "record",
                              "create") from None
        finally:
            os.close(fd)

    def unregister(self, area: str, name: str) -> bool:
        """Remove ``name`` from ``area``; False if it was not there."""
        fd = self._area(area)
        if fd is None:
            return False
        try:
            os.unlink(name, dir_fd=fd)
            return True
        except FileNotFoundError:
            return False
        finally:
            os.close(fd)

    # -- IDs ---------------------------------------------------------------

    def allocate_id(self) -> int:
        """Hand out the next job ID, never given before, and create its directory.

        The first write of a Store: it creates the state directory if need be.
        The counter is read and bumped under an exclusive flock on ``lock``, so
        concurrent submitters from shells and cron never get the same ID.  The
        highest ID is kept twice — in ``last-id`` and in the lock file itself —
        and the highest job directory is a third floor: losing or damaging one
        of them (a crash, a careless ``rm``) cannot make an ID come back.  A
        number above ``MAX_ID`` is damage, not an ID: it is not believed.
        """
        jobs = self._jobs_fd(create=True)
        root = self._root_fd(create=True)
        lock_path = os.path.join(self.root, LOCK)
        try:
            lock_fd = os.open(LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                              dir_fd=root)
        except OSError as exc:
            raise _open_error(exc, lock_path, "lock", "open") from None
        try:
            size = _check_file(lock_fd, lock_path, "lock").st_size
            _private(lock_fd)
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            kept = _read_int_at(root, COUNTER)
            copy = _parse_int(os.pread(lock_fd, 32, 0))
            last = max(kept or 0, copy or 0)
            if kept is None or kept != copy:  # one copy lost or damaged: scan the jobs too
                known = [*self.job_ids(), *self.history.entries()]
                last = max(last, max((i for i in known if i <= MAX_ID), default=0))
            job_id = last + 1
            while _lexists(str(job_id), jobs):
                job_id += 1  # a directory the counter does not know of: never reuse it
            for name in os.listdir(root):  # only allocate_id writes the counter: a crash's
                if name.startswith(f".{COUNTER}.") and name.endswith(".tmp"):
                    try:
                        os.unlink(name, dir_fd=root)
                    except OSError:
                        pass
            # Not fsync'd here: the job's header is (by its reaper).
            _write_at(root, COUNTER, [b"%d\n" % job_id], False,
                      os.path.join(self.root, COUNTER))
            os.pwrite(lock_fd, b"%-31d\n" % job_id, 0)
            if size > 32:
                os.ftruncate(lock_fd, 32)  # a damaged, longer copy: only ours is left
            self.create_job_dir(job_id)
            return job_id
        except OSError as exc:
            raise StorageError(f"cannot allocate a job ID in {self.root}: {_describe(exc)}") \
                from None
        finally:
            os.close(lock_fd)


class Flusher:
    """fsyncs files in a background thread, so that the reaper's loop never waits on the disk.

    A file is fsync'd after its rename; it is handed over as a path or as
    (directory descriptor, name), the descriptor held by the Store.  On ext4
    (data=ordered) the journal commit that the first fsync of a burst forces
    carries the other pending files too, so a burst of task results costs about
    one flush, not one each.  ``drain`` returns once everything handed over is
    on disk; the reaper drains before it exits, so a job's result is durable by
    the time ``wait`` returns.  Results wait up to ``WINDOW`` seconds for others
    to share their flush.
    """

    WINDOW = 0.05

    def __init__(self):
        import threading

        self._pending: list = []
        self._busy = False
        self._draining = False
        self._changed = threading.Condition()
        threading.Thread(target=self._run, name="flusher", daemon=True).start()

    def add(self, path) -> None:
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
            for item in dict.fromkeys(batch):
                try:
                    if isinstance(item, tuple):
                        _fsync_at(*item)
                    else:
                        _fsync_at(None, item)
                except OSError:
                    pass  # gone (deleted) or failing: nobody is left to tell
            with self._changed:
                self._busy = False
                self._changed.notify_all()


# -- files, relative to a directory descriptor ------------------------------------------------

def _fsync_at(dir_fd: int | None, name: str) -> None:
    fd = os.open(name, _READ_FLAGS, dir_fd=dir_fd)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _lexists(name: str, dir_fd: int) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def _make_dir(parent_fd: int, name: str, path: str, exclusive: bool = False) -> int:
    """Create directory ``name`` exactly 0700 (whatever the umask) and return its descriptor;
    an existing one (made meanwhile by another process) is opened, unless ``exclusive``."""
    try:
        os.mkdir(name, 0o700, dir_fd=parent_fd)
        made = True
    except FileExistsError:
        if exclusive:
            raise StorageError(f"cannot create {path}: it exists") from None
        made = False
    except OSError as exc:
        raise StorageError(f"cannot create {path}: {_describe(exc)}") from None
    try:
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
        except PermissionError:  # a umask that took the owner's own bits
            if not made:
                raise
            os.chmod(name, 0o700, dir_fd=parent_fd)
            fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
        if made:
            os.fchmod(fd, 0o700)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise StorageError(f"state directory {path} is not a directory") from None
        raise StorageError(f"cannot create {path}: {_describe(exc)}") from None
    return fd


def _remove_tree(parent_fd: int, name: str) -> None:
    """Remove directory ``name`` and everything in it, relative to ``parent_fd``, never
    following a link; whatever cannot be removed is left."""
    try:
        fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    except OSError:
        try:
            os.unlink(name, dir_fd=parent_fd)
        except OSError:
            pass
        return
    try:
        for entry in os.listdir(fd):
            try:
                os.unlink(entry, dir_fd=fd)
            except IsADirectoryError:
                _remove_tree(fd, entry)
            except OSError as exc:
                if exc.errno in (errno.EISDIR, errno.EPERM):
                    _remove_tree(fd, entry)
    except OSError:
        pass
    finally:
        os.close(fd)
    try:
        os.rmdir(name, dir_fd=parent_fd)
    except OSError:
        pass


def _read_at(dir_fd: int, name: str, path: str) -> bytes | None:
    """The whole file ``name`` of the directory, or None if it does not exist; a link or
    anything but a regular file with one link is a StorageError naming ``path``."""
    try:
        fd = os.open(name, _READ_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise _open_error(exc, path, "record") from None
    try:
        _check_file(fd, path, "record")
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
    except OSError as exc:
        raise StorageError(f"cannot read {path}: {_describe(exc)}") from None
    finally:
        os.close(fd)
    return b"".join(chunks)


def _read_int_at(dir_fd: int, name: str) -> int | None:
    """The number in file ``name`` (never through a link), or None if it is missing,
    planted or damaged."""
    try:
        fd = os.open(name, _READ_FLAGS, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
            return None
        return _parse_int(os.read(fd, 64))
    finally:
        os.close(fd)


def _parse_int(data: bytes) -> int | None:
    """The ID that ``data`` holds, or None if it holds none that can be believed."""
    try:
        number = int(data)
    except ValueError:
        return None
    return number if 0 <= number <= MAX_ID else None


def _write_at(dir_fd: int, name: str, chunks: Iterable[bytes], durable: bool,
              path: str) -> None:
    """Write ``chunks`` to ``name`` in the directory through a private temporary file
    (a fresh random name, created exclusively: never a planted link) and a rename."""
    for _ in range(_TEMP_TRIES):
        tmp = f".{name}.{os.urandom(6).hex()}.tmp"
        try:
            fd = os.open(tmp, _CREATE_FLAGS, 0o600, dir_fd=dir_fd)
            break
        except FileExistsError:
            continue
        except OSError as exc:
            raise _write_error(exc, dir_fd, path) from None
    else:
        raise StorageError(f"cannot write {path}: no free temporary name")
    try:
        try:
            _private(fd)
            for chunk in chunks:
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view):]
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except OSError as exc:
        try:
            os.unlink(tmp, dir_fd=dir_fd)
        except OSError:
            pass
        raise _write_error(exc, dir_fd, path) from None


class GrowingLines:
    """An append-only file of lines, read once and then only what was added since: the
    history and an array's task log are read so.  A file replaced (another inode) or
    shorter than what was read is read anew, whole; an unfinished last line (a writer
    at work) is left for a later read.  A subclass takes the lines (``_take``) and
    forgets them (``_forget``)."""

    def __init__(self, path: str):
        self.path = path
        self._seen: tuple[int, int] | None = None  # (st_dev, st_ino) of the file read
        self._offset = 0  # the end of the last whole line read

    def _take(self, lines: list[bytes]) -> None:
        raise NotImplementedError

    def _forget(self) -> None:
        self._seen, self._offset = None, 0

    def _read_new(self, fd: int) -> None:
        """Take the whole lines added to the open file ``fd`` since the last read."""
        try:
            info = _check_file(fd, self.path, "record")
            if self._seen != (info.st_dev, info.st_ino) or info.st_size < self._offset:
                self._forget()
                self._seen = (info.st_dev, info.st_ino)
            if info.st_size > self._offset:
                data = os.pread(fd, info.st_size - self._offset, self._offset)
                end = data.rfind(b"\n") + 1
                self._take(data[:end].split(b"\n")[:-1])
                self._offset += end
        except OSError as exc:
            raise StorageError(f"cannot read {self.path}: {_describe(exc)}") from None


def append_line(fd: int, line: bytes, durable: bool, path: str) -> None:
    """Append ``line`` (newline-terminated) to the file whole, or nothing of it: what a
    writer killed half-way through its line left at the end is cut off first, and a write
    that fails is cut off again, so readers only ever see whole lines.  The caller holds
    the file's lock."""
    start = None
    try:
        start = _whole_lines(fd, os.fstat(fd).st_size)
        view = memoryview(line)
        while view:
            view = view[os.write(fd, view):]
        if durable:
            os.fsync(fd)
    except OSError as exc:
        try:
            if start is not None:
                os.ftruncate(fd, start)
        except OSError:
            pass
        raise StorageError(f"cannot write {path}: {_describe(exc)}") from None


def _whole_lines(fd: int, size: int) -> int:
    """The end of the file's last whole line, where the next line goes; an unfinished
    line after it is cut off.  Most often the file ends with a newline: one byte read."""
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return size
    end = size
    while end > 0:
        chunk = os.pread(fd, min(end, 1 << 16), end - min(end, 1 << 16))
        newline = chunk.rfind(b"\n")
        if newline >= 0:
            end = end - len(chunk) + newline + 1
            break
        end -= len(chunk)
    if end < size:
        os.ftruncate(fd, end)
    return end


def _write_error(exc: OSError, dir_fd: int, path: str) -> Exception:
    if exc.errno == errno.ENOENT:
        try:
            gone = os.fstat(dir_fd).st_nlink == 0
        except OSError:
            gone = True
        if gone:
            return JobNotFound(f"job directory {os.path.dirname(path)} is gone")
    return StorageError(f"cannot write {path}: {_describe(exc)}")

"""A ready-made ``status --json`` of the history's jobs: ten thousand ended jobs listed by
reading two files, not by checking ten thousand lines.

Why: listing every job as JSON checks each line of the history (its CRC, its fields,
its template put in place): about 75 ms for 10,000 ended jobs on a 2-CPU VM, where
reading the bytes takes a few.  The history changes only at its end (``core.history``),
so what its first bytes said is worth keeping.

What: ``history-BACKEND.listing`` beside the history.  Its first line names the history
it was made from (device and inode), how many of its bytes it covers and their CRC-32,
its change time (ctime) if the listing covers all of it, how many jobs it holds and the
CRC-32 of all that follows the line: the jobs' IDs in order, where each job's JSON
starts, the errors the covered lines gave (a damaged line is reported as if it were
read), then the JSON of every job of the backend in those bytes, in ID order, each
followed by ``", "``: what ``status --json`` prints.

Trust: a listing is used only if its own CRC holds and the history is the same file
with the same first bytes: the history only grows at its end, or is written anew
(another inode) by ``delete``, which removes the listings too.  The same size and change
time say that nothing was written to it since (a ctime cannot be set back; no bytes
read); else the CRC of the bytes the listing covers must still hold.  The lines after
what the listing covers are read as before and win over it, as ``jobs/N`` wins over
both.  Anything else, and the history is read whole, as if there were no listing: the
output is the same either way.

Who writes it: ``status --json``, once it has read ``REFRESH_JOBS`` or more jobs that no
listing held, under the history's lock, if the history is still the file it read (so
that ``delete`` removes every listing of the old one), its first bytes' CRC taken of
what it read (a private temporary file renamed into place: never half a listing).  It
is the one file a reader writes; one that cannot be written (a full disk) is no error.
"""

from __future__ import annotations

import os
import sys
import zlib
from typing import NamedTuple

from .. import __version__
from .errors import StorageError
from .store import _READ_FLAGS, _check_file, _write_at

# IDs and offsets are 8-byte integers in the machine's byte order, which the line names,
# as it names the version whose JSON the listing holds.
MAGIC = b"ostracker-listing 1 %s %s" % (sys.byteorder.encode(), __version__.encode())
REFRESH_JOBS = 64  # jobs read past the listing (or with none) that make a new one
SEPARATOR = b", "
_CHUNK = 1 << 20
_HEAD_MOST = 512  # bytes: a first line longer than this is no listing's


def listing_name(backend: str) -> str:
    return f"history-{backend}.listing"


def remove_listings(root: int, whole: bool = True) -> None:
    """Remove what writers stopped half-way left of listings (Ctrl-C, a kill) and, if
    ``whole``, every backend's listing, from the state dir ``root``.  Under the history's
    lock, which every writer of a listing holds: no temporary file is anyone's still."""
    for name in os.listdir(root):
        if (name.startswith(".history-") and ".listing." in name and name.endswith(".tmp")) \
                or (whole and name.startswith("history-") and name.endswith(".listing")):
            try:
                os.unlink(name, dir_fd=root)
            except OSError:
                pass


def followed(parts) -> list:
    """Each JobInfos' JSON but the empty, followed by ``SEPARATOR``: the pieces of a
    listing, as written one after the other."""
    return [piece for part in parts if part for piece in (part, SEPARATOR)]


def prefix_crc(fd: int, length: int) -> int | None:
    """The CRC-32 of the open file's first ``length`` bytes; None if it has fewer."""
    crc = offset = 0
    while offset < length:
        data = os.pread(fd, min(_CHUNK, length - offset), offset)
        if not data:
            return None
        crc = zlib.crc32(data, crc)
        offset += len(data)
    return crc


class Reading(NamedTuple):
    """What a reader read of the history, for a listing made of it: the whole lines
    ``data`` after its first ``start`` bytes (whose CRC-32 is ``start_crc``), of the file
    (``dev``, ``ino``) whose change time was ``changed`` when it read all of it (else 0)."""
    dev: int
    ino: int
    changed: int
    start: int
    start_crc: int
    data: bytes


class Listing:
    """A listing found whole and true of the history it was made from (``load``)."""

    def __init__(self, ids: memoryview, starts: memoryview, blob: memoryview,
                 errors: list[tuple[int | None, str]], covered: int, history_crc: int):
        self.ids, self.starts, self.blob = ids, starts, blob
        self.errors = errors  # (job ID, or None for a line that names none; message)
        self.covered, self.history_crc = covered, history_crc  # bytes of the history

    @classmethod
    def load(cls, root: int, backend: str, history: int) -> Listing | None:
        """The backend's listing in the directory ``root`` if it is whole and still true of
        the open history ``history``; else None."""
        try:
            fd = os.open(listing_name(backend), _READ_FLAGS, dir_fd=root)
        except OSError:
            return None
        try:
            data = os.pread(fd, _check_file(fd, listing_name(backend), "listing").st_size, 0)
        except (OSError, StorageError):
            return None
        finally:
            os.close(fd)
        end = data.find(b"\n", 0, _HEAD_MOST)
        if end < 0 or not data.startswith(MAGIC + b" "):
            return None
        try:
            dev, ino, covered, history_crc, changed, count, errors_size, body_crc = \
                (int(field) for field in data[len(MAGIC) + 1:end].split(b" "))
        except ValueError:  # too few or too many fields, or not numbers
            return None
        body = memoryview(data)[end + 1:]
        index = 8 * count
        if min(covered, count, errors_size) < 0 or \
                len(body) < 2 * index + 8 + errors_size or zlib.crc32(body) != body_crc:
            return None
        starts = body[index:2 * index + 8].cast("q")
        blob = body[2 * index + 8 + errors_size:]
        if starts[0] != 0 or starts[count] != len(blob):
            return None
        try:
            info = os.fstat(history)
            if (info.st_dev, info.st_ino) != (dev, ino) or info.st_size < covered:
                return None
            if not (info.st_size == covered and info.st_ctime_ns == changed) and \
                    prefix_crc(history, covered) != history_crc:
                return None
            errors = _errors(bytes(body[2 * index + 8:2 * index + 8 + errors_size]))
        except (OSError, ValueError, TypeError, RecursionError):
            return None
        return cls(body[:index].cast("q"), starts, blob, errors, covered, history_crc)

    def merged(self, extra: dict[int, bytes], skip: set[int]) -> list:
        """The listing's JSON with the jobs of ``skip`` cut out and ``extra``'s put in at
        their places: pieces to write one after the other, each job followed by ``", "``
        (slices of the listing between the few jobs that differ, never copied)."""
        from bisect import bisect_left

        ids, starts, blob = self.ids, self.starts, self.blob
        pieces, taken = [], 0
        for job_id in sorted(skip | extra.keys()):
            at = bisect_left(ids, job_id, taken)
            if at > taken:
                pieces.append(blob[starts[taken]:starts[at]])
            taken = at + 1 if at < len(ids) and ids[at] == job_id else at
            pieces += followed([extra.get(job_id)])
        if taken < len(ids):
            pieces.append(blob[starts[taken]:starts[len(ids)]])
        return pieces

    def parts(self) -> dict[int, bytes]:
        """Each job's JSON by ID."""
        starts, blob = self.starts, self.blob
        return {job_id: bytes(blob[starts[i]:max(starts[i], starts[i + 1] - len(SEPARATOR))])
                for i, job_id in enumerate(self.ids)}


def _errors(text: bytes) -> list[tuple[int | None, str]]:
    """The errors a listing holds (JSON: a list of [ID or null, message]); ValueError if
    they are not that."""
    if text == b"[]":
        return []  # the common case, without loading json
    import json

    errors = [(job_id, message) for job_id, message in json.loads(text)]
    if not all(isinstance(message, str) and (job_id is None or type(job_id) is int)
               for job_id, message in errors):
        raise ValueError("not a listing's errors")
    return errors


def write_listing(root: int, backend: str, read: Reading, parts: dict[int, bytes],
                  errors: list[tuple[int | None, str]]) -> None:
    """A new listing of ``parts`` (each job's JSON by ID) and ``errors``, made from what
    ``read`` says was read of the history.  The caller holds the history's lock and has
    checked that the history is still the file read; a listing that cannot be written
    is no error."""
    from array import array
    import json

    ids, starts, offset = array("q", sorted(parts)), array("q"), 0
    for job_id in ids:
        starts.append(offset)
        offset += len(parts[job_id]) + len(SEPARATOR) if parts[job_id] else 0
    starts.append(offset)
    body = [ids.tobytes(), starts.tobytes(), json.dumps(errors).encode(),
            b"".join(followed(parts[job_id] for job_id in ids))]
    body_crc = 0
    for chunk in body:
        body_crc = zlib.crc32(chunk, body_crc)
    head = MAGIC + b" %d %d %d %d %d %d %d %d\n" % (
        read.dev, read.ino, read.start + len(read.data), zlib.crc32(read.data, read.start_crc),
        read.changed, len(ids), len(body[2]), body_crc)
    remove_listings(root, whole=False)
    try:
        _write_at(root, listing_name(backend), [head, *body], False, listing_name(backend))
    except StorageError:
        pass  # a cache: the next listing tries again

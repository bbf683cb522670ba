"""LinuxApplication: a process on a LinuxNode (NEPI's ``linux::Application``).

Deploy prepares ``${HOME}/nepi-exp/<exp_id>/app-<guid>/<run_id>`` (the run
home): packages from ``depends``, ``sources``/``files``/``libs``/``bins``
uploaded, ``code`` written, then ``build`` and ``install`` run.  Start runs
``command`` detached from the worker in its own session; the per-process
:mod:`watcher <nepi_dist.resources.linux.watcher>` sees it exit and sets
FINISHED (exit code 0) or FAILED.  Stop and release kill its process group;
the exit they cause is not a failure (see :meth:`LinuxApplication.on_exit`).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import urllib.request
from typing import Any

from nepi_dist.errors import AttributeValueError, UnknownTraceError, shown
from nepi_dist.model import secrets
from nepi_dist.model.attribute import Attribute, Flags, Types
from nepi_dist.model.resource import ResourceManager
from nepi_dist.model.state import ResourceState
from nepi_dist.model.trace import Trace, TraceAttr
from nepi_dist.resources.linux import watcher
from nepi_dist.resources.linux.node import LinuxNode

_TRACE_NAME = re.compile(r"^[A-Za-z0-9._-]+$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: A package name as Debian and RPM write them (with an optional :arch or =version).
_PACKAGE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9+._~:=-]*$")


def package_names(value: Any) -> Any:
    """Check ``depends``: space-separated package names, nothing a shell would read as more."""
    if isinstance(value, str):
        bad = [p for p in value.split() if not _PACKAGE.match(p)]
        if bad:
            raise AttributeValueError(f"attribute 'depends': {shown(bad[0])} is not a package name")
    return value


def _text_or_bytes(data: bytes) -> str | bytes:
    """Text traces come back as str; binary ones (a pcap) as bytes."""
    try:
        return data.decode()
    except UnicodeDecodeError:
        return data


def _split(value: str | None, sep: str = ";") -> list[str]:
    if not value:
        return []
    return [v.strip() for v in value.split(sep) if v.strip()]


class LinuxApplication(ResourceManager):
    """A command run on the LinuxNode it is connected to."""

    _rtype = "linux::Application"
    _aliases = ("LinuxApplication",)
    _help = "Runs an application on a Linux host"
    _platform = "linux"

    @classmethod
    def _register_attributes(cls) -> None:
        add = cls._register_attribute
        ro = Flags.ExecReadOnly
        cmd = Flags.ExecReadOnly | Flags.Command
        add(Attribute("command", "Command to execute (bash)", flags=cmd))
        add(Attribute("env", "Environment: space-separated VAR=value pairs", flags=ro))
        add(Attribute("stdin", "Standard input of the command: a local file's content when it names one "
                      "(as NEPI), else the text itself", flags=ro))
        add(Attribute("sudo", "Run the command with sudo", type=Types.Bool, default=False, flags=ro))
        add(Attribute("depends", "Space-separated packages the host must have: those missing are installed "
                      "(apt-get or dnf), one package-manager run at a time per host", flags=ro,
                      coerce=package_names))
        add(Attribute("sources", "';'-separated local paths or http(s) URLs uploaded to ${SRC}", flags=ro))
        add(Attribute("files", "';'-separated local files uploaded to ${SHARE}", flags=ro))
        add(Attribute("libs", "';'-separated local files uploaded to ${LIB}", flags=ro))
        add(Attribute("bins", "';'-separated local files uploaded to ${BIN}", flags=ro))
        add(Attribute("code", "Program text written to ${APP_HOME}/code", flags=ro))
        add(Attribute("build", "Build command, run in ${APP_HOME} at deploy", flags=cmd))
        add(Attribute("install", "Install command, run in ${APP_HOME} after build", flags=cmd))
        add(Attribute("tearDown", "Command run at release", flags=cmd))
        add(Attribute("forwardX11", "Forward X11 over SSH", type=Types.Bool, default=False, flags=ro,
                      unsupported="applications run detached from any terminal, with no X11 forwarding"))

    @classmethod
    def _register_traces(cls) -> None:
        for name, help_ in (
            ("stdout", "Standard output of the command"),
            ("stderr", "Standard error of the command"),
            ("deploy_stdout", "Output of the deploy steps (depends, build, install)"),
            ("deploy_stderr", "Errors of the deploy steps"),
            ("deploy_exitcode", "Exit code of the last deploy step"),
            ("exitcode", "Exit code of the command"),
        ):
            cls._register_trace(Trace(name, help_))

    # -- where -----------------------------------------------------------------------

    @property
    def node(self) -> LinuxNode:
        nodes = [rm for rm in self.get_connected() if isinstance(rm, LinuxNode)]
        if not nodes:
            raise RuntimeError(f"application {self.guid} is not connected to a linux::Node")
        return nodes[0]

    @property
    def app_home(self) -> str:
        return f"{self.node.exp_home}/app-{self.guid}"

    @property
    def run_home(self) -> str:
        return f"{self.app_home}/{self.ec.run_id}"

    def paths(self) -> dict[str, str]:
        """NEPI's path variables (``USR``, ``APP_HOME``, ...) and the paths they stand for on the host."""
        node = self.node
        return {
            "USR": node.usr_dir, "LIB": node.lib_dir, "BIN": node.bin_dir, "SRC": node.src_dir,
            "SHARE": node.share_dir, "EXP": node.exp_dir, "EXP_HOME": node.exp_home,
            "APP_HOME": self.app_home, "RUN_HOME": self.run_home, "NODE_HOME": node.node_home,
            "HOME": node.home_dir,
        }

    def replace_paths(self, text: str) -> str:
        """Expand NEPI's path variables in ``text`` as text (a file's content, one value of ``env``)."""
        for var, value in self.paths().items():
            text = text.replace(f"${{{var}}}", value)
        return text

    def shell_command(self, command: str) -> str:
        """Return ``command`` (a :attr:`Flags.Command` value) with NEPI's path variables as shell variables.

        Each ``${APP_HOME}`` (...) becomes ``${NEPI_APP_HOME}``, a shell
        variable the command line assigns first, quoted: a path is never
        parsed as shell text, whatever it holds, and ``"${RUN_HOME}/x"``
        still works inside double quotes.
        """
        paths = self.paths()
        for var in paths:
            command = command.replace(f"${{{var}}}", f"${{NEPI_{var}}}")
        assign = " ".join(f"NEPI_{var}={shlex.quote(value)}" for var, value in paths.items())
        return f"{assign}; {command}"

    @property
    def pid(self) -> int | None:
        value = self._got("pid")
        return None if value is None else int(value)

    @property
    def exitcode(self) -> int | None:
        value = self._got("exitcode")
        return None if value is None else int(value)

    # -- deploy ----------------------------------------------------------------------

    def do_deploy(self) -> None:
        node = self.node
        if node.state < ResourceState.READY and self.ec._park_or_delay(
            {"g": self.guid, "m": "deploy"}, [node.guid], ResourceState.READY, 0.0
        ):
            return
        self.discover()
        self.provision()
        if self._starts_at_deploy() and self.get("command"):
            # Launched before READY, so it already runs when the others of its group start.
            pid = self._launch()
            self._put(early_pid=pid)  # before READY: a start that passes its gate sees it (do_start)
            self._await_launched(pid)
            self.set_ready()
            self._watch(pid)
            return
        self.set_ready()

    def _starts_at_deploy(self) -> bool:
        """True when the command is launched at deploy, not at start (NEPI's udptest server,
        ping's ``earlyStart``): it becomes STARTED as soon as it is READY."""
        return False

    def _await_launched(self, pid: int) -> None:
        """Wait, after a launch at deploy, until the process ``pid`` is of use to the others (a server
        listening); READY follows.  Here: at once."""

    def do_provision(self) -> None:
        node = self.node
        node.execute(f"mkdir -p {shlex.quote(self.run_home)}", check=True)
        self._upload_all()
        steps: list[tuple[str, str]] = []
        depends = (self.get("depends") or "").split()
        if depends:
            steps.append(("depends", ""))
        for name in ("build", "install"):
            command = self.get(name)
            if command:
                steps.append((name, f"cd {shlex.quote(self.app_home)} && {self.shell_command(command)}"))
        out, err, code = [], [], 0
        try:
            for name, command in steps:
                result = node.install_packages(depends) if name == "depends" else node.execute(command, timeout=3600)
                out.append(result.stdout)
                err.append(result.stderr)
                code = result.exitcode
                if code != 0:
                    raise RuntimeError(f"deploy step {name!r} exited {code}: {result.stderr.strip()[-500:]}")
        finally:
            self._write("deploy_stdout", "".join(out))
            self._write("deploy_stderr", "".join(err))
            self._write("deploy_exitcode", f"{code}\n")
        super().do_provision()

    def _add_depends(self, package: str) -> None:
        """Add ``package`` to ``depends`` (once, the names sorted), so that provision installs it.

        For the types whose binary comes from a package (the tools, the probes):
        they call it when the host lacks the binary, before this provision runs.
        """
        depends = {*(self.get("depends") or "").split(), package}
        self.set("depends", " ".join(sorted(depends)))

    def _write(self, name: str, text: str) -> None:
        self.node.upload(text.encode(), f"{self.run_home}/{name}")

    def _upload_all(self) -> None:
        node = self.node
        for attr, target in (("sources", node.src_dir), ("files", node.share_dir),
                             ("libs", node.lib_dir), ("bins", node.bin_dir)):
            for item in _split(self.get(attr)):
                data, name = self._fetch(item)
                node.upload(data, f"{target}/{name}", 0o755 if attr == "bins" else 0o644)
        code = self.get("code")
        if code:
            node.upload(self.replace_paths(code).encode(), f"{self.app_home}/code", 0o755)
        stdin = self.get("stdin")
        if stdin:
            path = os.path.expanduser(stdin)
            if "\n" not in stdin and os.path.isfile(path):  # NEPI: a local file names the input
                with open(path, "rb") as f:
                    data = f.read()
            else:
                data = stdin.encode()
            node.upload(data, f"{self.run_home}/stdin_data")

    @staticmethod
    def _fetch(item: str) -> tuple[bytes, str]:
        if item.startswith(("http://", "https://")):
            with urllib.request.urlopen(item, timeout=60) as response:
                data = response.read()
            name = os.path.basename(item.split("?", 1)[0].rstrip("/")) or "index.html"
            return data, name
        with open(os.path.expanduser(item), "rb") as f:
            return f.read(), os.path.basename(item)

    # -- run -------------------------------------------------------------------------

    def _env(self) -> dict[str, str]:
        """The ``env`` attribute as names and values; a name that is not a shell identifier is refused.

        Split first, then each value's path variables expanded: a path can
        neither split a value nor end it.
        """
        env = {}
        for pair in shlex.split(self.get("env") or ""):
            key, sep, value = pair.partition("=")
            if not sep:
                continue
            if not _ENV_NAME.match(key):
                raise ValueError(f"env: {key[:60]!r} is not a variable name (letters, digits, '_')")
            env[key] = self.replace_paths(value)
        return env

    def do_start(self) -> None:
        command = self.get("command")
        if not command:
            self.set_started()
            self.set_stopped()
            return
        node = self.node
        pid = self.pid
        if pid is not None and self._got("early_pid") == pid:
            return  # launched by the deploy, which watches it and sets STARTED
        if self._resumed and pid is not None and node.execute(f"kill -0 {int(pid)}").exitcode == 0:
            # A start cut short after it launched the command: watch that process, launch no other.
            watcher.watch(self.ec, self.guid, node.host_spec(), self.run_home, pid, self.set_started)
            return
        self._watch(self._launch())

    def _launch(self) -> int:
        """Run ``command`` detached in the run home; record and return its pid."""
        stdin = f"{self.run_home}/stdin_data" if self.get("stdin") else None
        pid = self.node.run_detached(self.shell_command(self.get("command")), self.run_home, stdin=stdin,
                                     env=self._env(), sudo=bool(self.get("sudo")))
        self._put(pid=pid)
        return pid

    def _watch(self, pid: int) -> None:
        """Watch the launched process ``pid`` and become STARTED."""
        node = self.node
        watcher.watch(self.ec, self.guid, node.host_spec(), self.run_home, pid, self.set_started)
        # A release that began before the pid was recorded did not see this process: it is
        # this start's to stop.  (One that began after it saw the pid and stops it itself.)
        if self._got("releasing"):
            node.kill_group(pid, sudo=bool(self.get("sudo")))

    def do_stop(self) -> None:
        pid = self.pid
        if pid is not None:
            # Recorded before the kill: the exit it causes is the stop's, not a failure.
            self._put(stopped_pid=pid, early_pid=None)
            self.node.kill_group(pid, sudo=bool(self.get("sudo")))
        self._end(ResourceState.STOPPED)

    def _end(self, state: ResourceState) -> bool:
        """Move STARTED -> ``state`` in one atomic step; False (nothing changed) when no longer STARTED.

        The process's own end (FINISHED, FAILED) and a stop race each other:
        whichever comes first is the RM's state, the other changes nothing.
        """
        return self._set_state(state, allowed_from=(ResourceState.STARTED,))

    def on_exit(self, exitcode: int | None, pid: int | None = None) -> None:
        """Called by the watcher when the session of process ``pid`` ended (None: the current one).

        ``exitcode`` is what the command's wrapper recorded, None when the
        wrapper was killed first.  Our stop and release kill the whole group,
        wrapper included, so an exit code means the command ended by itself:
        FINISHED on 0, FAILED otherwise.  No exit code is a failure unless a
        stop or release of this process was recorded, which both do in Redis
        before they kill: the exit came after the kill, so this read, after
        the exit, sees the record.
        """
        fields = self._store.rm_fields(self.guid, "state", "p:pid", "p:stopped_pid", "p:releasing")
        state, current, stopped, releasing = (None if f is None else json.loads(f) for f in fields)
        if state != ResourceState.STARTED:
            return  # stopped, released, or already ended: the exit is no news
        if pid is not None and current is not None and pid != current:
            return  # an earlier run's process (the RM was stopped and started again)
        pid = current if pid is None else pid
        if exitcode is None:
            if releasing or (stopped is not None and stopped == pid):
                return  # our own kill: the stop or release sets the state
            self._fail_started("the command was killed before it could record its exit code")
            return
        self._put(exitcode=exitcode)
        if exitcode == 0:
            self._end(ResourceState.FINISHED)
        else:
            tail = self.trace("stderr", TraceAttr.ALL) or ""
            self._fail_started(f"command exited {exitcode}: {str(tail).strip()[-500:]}")

    def _fail_started(self, message: str) -> None:
        """FAILED with ``message``, only from STARTED (a stop or release that came first wins).

        The message is written first, so whoever sees FAILED finds it; when the
        stop or release won, it stays as a true note of how the command ended.
        """
        self._store.set_fields(self.guid, {"err": secrets.redact(message)[:4000]})
        self._end(ResourceState.FAILED)

    def do_release(self) -> None:
        # Recorded before anything is killed: every exit from here on is the release's.
        self._put(releasing=True)
        sudo = bool(self.get("sudo"))
        try:
            state, pid = self._store.rm_fields(self.guid, "state", "p:pid")
            # READY with a pid: a start the abort or this release refused after it launched the command.
            if pid is not None and state is not None and int(state) in (ResourceState.READY, ResourceState.STARTED):
                self.node.kill_group(int(json.loads(pid)), sudo=sudo)
            tear_down = self.get("tearDown")
            if tear_down:
                self.node.execute(f"cd {shlex.quote(self.app_home)} && {self.shell_command(tear_down)}",
                                  timeout=300)
        finally:
            self.set_released()

    # -- traces ----------------------------------------------------------------------

    def _trace_declared(self, name: str) -> Trace:
        if name in self._traces:
            return self._traces[name]
        if _TRACE_NAME.match(name) and name not in (".", ".."):
            return Trace(name, "a file in the run home")
        raise UnknownTraceError(f"{self._rtype} has no trace {name!r}")

    def trace(self, name: str, attr: str = TraceAttr.ALL, block: int = 512, offset: int = 0) -> Any:
        """Return a file of the run home: all of it, a block, its path or its size."""
        self._trace_declared(name)
        path = f"{self.run_home}/{name}"
        node = self.node
        if attr == TraceAttr.PATH:
            return path
        try:
            if attr == TraceAttr.SIZE:
                return node.file_size(path)
            if attr == TraceAttr.STREAM:
                return _text_or_bytes(node.download(path, block * offset, block))
            return _text_or_bytes(node.download(path))
        except FileNotFoundError:
            return None if attr != TraceAttr.SIZE else 0

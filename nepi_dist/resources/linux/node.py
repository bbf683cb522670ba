"""LinuxNode: a host reached locally or over SSH (NEPI's ``linux::Node``)."""

from __future__ import annotations

import shlex
import socket
from typing import Any

from nepi_dist.engine.routing import DEFAULT_WORKER_WAIT, WORKER_WAIT, this_worker_host
from nepi_dist.model.attribute import Attribute, Flags, Types
from nepi_dist.model.resource import ResourceManager
from nepi_dist.model.state import ResourceState
from nepi_dist.resources.linux.shell import HostSpec, Result, Shell, shell_for

#: The file on each host whose flock makes package installs take turns (world-writable /tmp:
#: every user of the host and every worker reaching it meet on the same file).
PACKAGE_LOCK = "/tmp/nepi-dist-packages.lock"
#: Seconds an install waits for the host's package lock (and apt-get for dpkg's) before failing.
PACKAGE_WAIT = 1800


def install_script(packages: list[str], lock: str = PACKAGE_LOCK, wait: int = PACKAGE_WAIT) -> str:
    """The bash script installing the missing ones of ``packages``, one run per host at a time.

    It prints what it did on its first line of output (``nepi_dist: ...``); exit
    code 0 when every package is installed at the end.
    """
    names = " ".join(shlex.quote(p) for p in packages)
    timeout = f"-o DPkg::Lock::Timeout={int(wait)}"
    return (
        f"pkgs=({names}); "
        "have() { if command -v dpkg >/dev/null 2>&1; then "
        "dpkg -s \"$1\" 2>/dev/null | grep -q '^Status: install ok installed'; "
        "elif command -v rpm >/dev/null 2>&1; then rpm -q \"$1\" >/dev/null 2>&1; else return 1; fi; }; "
        "lacking() { m=(); for p in \"${pkgs[@]}\"; do have \"$p\" || m+=(\"$p\"); done; }; "
        "lacking; "
        "if [ ${#m[@]} -eq 0 ]; then echo \"nepi_dist: already installed: ${pkgs[*]}\"; exit 0; fi; "
        f"lock={shlex.quote(lock)}; "
        "[ -e \"$lock\" ] || (umask 0; : >> \"$lock\") 2>/dev/null; "
        "exec 9<\"$lock\" || { echo \"nepi_dist: cannot open the package lock $lock\" >&2; exit 102; }; "
        "t0=$(date +%s.%N); "
        f"flock -w {int(wait)} 9 || {{ echo \"nepi_dist: waited {int(wait)} s for the package lock $lock\" >&2; "
        "exit 101; }; "
        "t1=$(date +%s.%N); "
        "lacking; "
        "if [ ${#m[@]} -eq 0 ]; then echo \"nepi_dist: installed meanwhile (lock held $t1, waited from $t0): "
        "${pkgs[*]}\"; exit 0; fi; "
        "echo \"nepi_dist: installing ${m[*]} (lock held $t1, waited from $t0)\"; "
        "S=\"\"; [ \"$(id -u)\" = 0 ] || S=\"sudo -n\"; "
        "if command -v apt-get >/dev/null 2>&1; then "
        f"  $S env DEBIAN_FRONTEND=noninteractive apt-get {timeout} install -y -q \"${{m[@]}}\" || "
        f"  {{ $S apt-get {timeout} update -q && "
        f"    $S env DEBIAN_FRONTEND=noninteractive apt-get {timeout} install -y -q \"${{m[@]}}\"; }}; "
        "elif command -v dnf >/dev/null 2>&1; then $S dnf install -y \"${m[@]}\"; "
        "elif command -v yum >/dev/null 2>&1; then $S yum install -y \"${m[@]}\"; "
        "else echo 'nepi_dist: no apt-get, dnf or yum on this host' >&2; exit 100; fi; "
        "code=$?; echo \"nepi_dist: released the package lock $(date +%s.%N)\"; exit $code"
    )


def _ere_literal(text: str) -> str:
    """``text`` as a POSIX extended regular expression matching exactly it (pkill's patterns)."""
    return "".join(f"\\{c}" if c in ".[]()*+?{}|^$\\" else c for c in text)


class LinuxNode(ResourceManager):
    """A Linux host.  ``localhost`` runs commands locally, any other host over SSH.

    Keeps ``${HOME}/nepi-usr/{lib,bin,src,share}`` and
    ``${HOME}/nepi-exp/<exp_id>/`` on the host.  It is released only after
    every RM connected to it is released.
    """

    _rtype = "linux::Node"
    _aliases = ("LinuxNode",)
    _help = "Controls a Linux host reached locally or over SSH"
    _platform = "linux"

    @classmethod
    def _register_attributes(cls) -> None:
        add = cls._register_attribute
        add(Attribute("hostname", "Host name or address; localhost, 127.0.0.1 or ::1 run locally "
                      "(whatever the username; a port other than 22 means an sshd there)",
                      default="localhost", flags=Flags.ExecReadOnly))
        add(Attribute("username", "SSH user", flags=Flags.ExecReadOnly))
        add(Attribute("port", "SSH port", type=Types.Integer, default=22, range=(1, 65535),
                      flags=Flags.ExecReadOnly))
        add(Attribute("identity", "SSH private key file", flags=Flags.ExecReadOnly | Flags.Credential))
        add(Attribute("serverKey", "The host's public key ('type base64'); when empty, the key must be in "
                      "the worker's ~/.ssh/known_hosts (or $NEPI_DIST_KNOWN_HOSTS)", flags=Flags.ExecReadOnly))
        add(Attribute("hostKeyCheck", "Verify the host's SSH key (serverKey or known_hosts); false accepts "
                      "any key, and each connection says so in the log", type=Types.Bool, default=True,
                      flags=Flags.ExecReadOnly))
        add(Attribute("password", "SSH password, or the passphrase of the identity key",
                      flags=Flags.ExecReadOnly | Flags.Credential))
        add(Attribute("gateway", "SSH gateway host (one hop)", flags=Flags.ExecReadOnly))
        add(Attribute("gatewayUser", "SSH gateway user", flags=Flags.ExecReadOnly))
        add(Attribute("connectTimeout", "Seconds to reach the host before failing", type=Types.Double,
                      default=10.0, range=(0.1, 600), flags=Flags.ExecReadOnly))
        add(Attribute("cleanHome", "Remove ${HOME}/nepi-* on deploy", type=Types.Bool, default=False,
                      flags=Flags.ExecReadOnly))
        add(Attribute("cleanExperiment", "Remove the experiment's folder on deploy", type=Types.Bool,
                      default=False, flags=Flags.ExecReadOnly))
        add(Attribute("cleanProcesses", "Kill the user's processes run from ${HOME}/nepi-exp on deploy and release",
                      type=Types.Bool, default=False, flags=Flags.ExecReadOnly))
        add(Attribute("cleanProcessesAfter", "At release, kill what is still running from this experiment's "
                      "folder on a remote host (never on the worker's own machine)", type=Types.Bool,
                      default=True, flags=Flags.ExecReadOnly))
        add(Attribute("home", "Folder holding nepi-usr and nepi-exp: absolute, or relative to ${HOME}; "
                      "default ${HOME}", flags=Flags.ExecReadOnly))
        add(Attribute("ip", "The host's IP address; found from hostname at deploy when not given",
                      flags=Flags.ExecReadOnly))
        add(Attribute("tearDown", "Command run on the host at release", flags=Flags.ExecReadOnly | Flags.Command))
        add(Attribute("worker", "Host worker serving this node (`nepi-dist worker --host NAME`): "
                      "its RMs run there, locally; empty = the pool, over SSH", flags=Flags.ExecReadOnly))
        add(Attribute(WORKER_WAIT, "Seconds a deploy waits for a live worker of this node's host; "
                      "after that the node and its RMs still waiting FAIL", type=Types.Double,
                      default=DEFAULT_WORKER_WAIT, range=(0.1, 86400), flags=Flags.ExecReadOnly))

    # -- where and how ---------------------------------------------------------------

    def host_spec(self) -> HostSpec:
        """How to reach the host: locally when this worker is the node's host worker."""
        worker = self.get("worker")
        if worker and worker == this_worker_host():
            return HostSpec(hostname="localhost")
        return HostSpec(
            hostname=self.get("hostname"),
            username=self.get("username"),
            port=self.get("port"),
            identity=self.get("identity"),
            gateway=self.get("gateway"),
            gateway_user=self.get("gatewayUser"),
            server_key=self.get("serverKey"),
            connect_timeout=self.get("connectTimeout"),
            verify_host_key=bool(self.get("hostKeyCheck")),
            password=self.get("password"),
        )

    @property
    def shell(self) -> Shell:
        return shell_for(self.host_spec())

    @property
    def home_dir(self) -> str:
        home = self._got("home")
        if home is None:
            home = self.execute("printf %s \"$HOME\"", check=True).stdout
            chosen = self.get("home")
            if chosen:
                home = chosen if chosen.startswith("/") else f"{home}/{chosen}"
            self._put(home=home)
        return str(home)

    @property
    def usr_dir(self) -> str:
        return f"{self.home_dir}/nepi-usr"

    @property
    def lib_dir(self) -> str:
        return f"{self.usr_dir}/lib"

    @property
    def bin_dir(self) -> str:
        return f"{self.usr_dir}/bin"

    @property
    def src_dir(self) -> str:
        return f"{self.usr_dir}/src"

    @property
    def share_dir(self) -> str:
        return f"{self.usr_dir}/share"

    @property
    def exp_dir(self) -> str:
        return f"{self.home_dir}/nepi-exp"

    @property
    def exp_home(self) -> str:
        return f"{self.exp_dir}/{self.ec.exp_id}"

    @property
    def node_home(self) -> str:
        return f"{self.exp_home}/node-{self.guid}"

    @property
    def os(self) -> str | None:
        value = self._got("os")
        return None if value is None else str(value)

    # -- commands --------------------------------------------------------------------

    def execute(self, command: str, stdin: bytes | None = None, timeout: float | None = None,
                check: bool = False) -> Result:
        """Run ``command`` on the host to completion."""
        result = self.shell.run(command, stdin=stdin, timeout=timeout)
        if check and result.exitcode != 0:
            raise RuntimeError(f"{command!r} exited {result.exitcode}: {result.stderr.strip()[-500:]}")
        return result

    def run_detached(self, command: str, home: str, stdin: str | None = None,
                     env: dict[str, str] | None = None, sudo: bool = False) -> int:
        """Start ``command`` in ``home`` detached from the worker, in its own session.

        stdout/stderr go to ``home/stdout`` and ``home/stderr``; when it ends,
        its exit code is written to ``home/exitcode``.  Returns the pid of the
        session leader (= its process group).
        """
        exports = "".join(f"export {k}={shlex.quote(v)}; " for k, v in (env or {}).items())
        inner = f"{exports}{command}"
        run = f"bash -c {shlex.quote(inner)}"
        if sudo:  # root needs no sudo (and a host may have none)
            run = f"if [ \"$(id -u)\" = 0 ]; then {run}; else sudo -E {run}; fi"
        src = shlex.quote(stdin) if stdin else "/dev/null"
        wrapper = (
            f"cd {shlex.quote(home)} || exit 1; "
            f"{run} < {src} > stdout 2> stderr; "
            "echo $? > exitcode.tmp; mv exitcode.tmp exitcode"
        )
        launch = (
            f"cd {shlex.quote(home)} || exit 1; rm -f exitcode; "
            f"setsid nohup bash -c {shlex.quote(wrapper)} > /dev/null 2>&1 < /dev/null & echo $! > .pid; cat .pid"
        )
        out = self.execute(launch, check=True).stdout.strip()
        return int(out.splitlines()[-1])

    def kill_group(self, pid: int, sudo: bool = False) -> None:
        """Terminate the process group led by ``pid`` (then kill what is left)."""
        prefix = "$S " if sudo else ""
        self.execute(
            ('S=""; [ "$(id -u)" = 0 ] || S="sudo -n"; ' if sudo else "")
            + f"{prefix}kill -TERM -- -{pid} 2>/dev/null; sleep 0.2; {prefix}kill -KILL -- -{pid} 2>/dev/null; true"
        )

    def upload(self, data: bytes, path: str, mode: int = 0o644) -> None:
        self.shell.write(path, data, mode)

    def download(self, path: str, offset: int = 0, size: int = -1) -> bytes:
        return self.shell.read(path, offset, size)

    def file_size(self, path: str) -> int:
        return self.shell.size(path)

    def install_packages(self, packages: list[str]) -> Result:
        """Install those of ``packages`` the host lacks (apt-get or dnf), as NEPI did.

        Installed packages are found first (``dpkg -s`` / ``rpm -q``): when none
        is missing, no package manager runs.  Otherwise one run at a time per
        host, however many workers reach it: the run holds an flock on
        :data:`PACKAGE_LOCK` on the host itself, and a second one waits for it
        (up to :data:`PACKAGE_WAIT` seconds), then checks again what is still
        missing.  apt-get also waits for the dpkg lock another program holds.
        """
        return self.execute(install_script(packages), timeout=PACKAGE_WAIT * 2 + 60)

    def missing_commands(self, commands: list[str]) -> list[str]:
        """Return which of ``commands`` are not on the host's PATH."""
        if not commands:
            return []
        probe = " ".join(shlex.quote(c) for c in commands)
        out = self.execute(f"for c in {probe}; do command -v \"$c\" >/dev/null || echo \"$c\"; done").stdout
        return out.split()

    # -- lifecycle -------------------------------------------------------------------

    def do_discover(self) -> None:
        os_name = self.execute(". /etc/os-release 2>/dev/null; printf %s \"${ID:-linux}\"", check=True).stdout
        self._put(os=os_name or "linux")
        super().do_discover()

    def do_provision(self) -> None:
        home = self.home_dir
        commands = []
        if self.get("cleanHome"):
            commands.append(f"rm -rf {shlex.quote(home)}/nepi-exp {shlex.quote(home)}/nepi-usr")
        elif self.get("cleanExperiment"):
            commands.append(f"rm -rf {shlex.quote(self.exp_home)}")
        if self.get("cleanProcesses"):
            # In a shell of its own: one whose command line names a nepi-exp path would be killed.
            self.execute(self._kill_user_processes())
        dirs = " ".join(shlex.quote(d) for d in (self.lib_dir, self.bin_dir, self.src_dir,
                                                  self.share_dir, self.node_home))
        commands.append(f"mkdir -p {dirs}")
        self.execute(" ; ".join(commands), check=True)
        if not self.get("ip") and not self.get("gateway"):
            try:
                infos = socket.getaddrinfo(self.get("hostname") or "localhost", None)
                self.set("ip", str(infos[0][4][0]))
            except OSError as exc:
                self.warning(f"cannot resolve {self.get('hostname')!r} to an address: {exc}")
        super().do_provision()

    def _kill_user_processes(self, folder: str | None = None) -> str:
        """The command killing the user's processes run from ``folder`` (default: this host's ``${HOME}/nepi-exp``).

        The pattern's last letter is in brackets so that it does not match the
        command line of the shell running it (which would kill that shell and
        the commands after it); run it alone, not joined to commands naming
        such a path.
        """
        folder = (folder or self.exp_dir).rstrip("/")
        pattern = _ere_literal(folder[:-1]) + f"[{folder[-1]}]/"  # in brackets a character is literal
        return f"pkill -KILL -u \"$(id -u)\" -f {shlex.quote(pattern)} 2>/dev/null; true"

    def do_start(self) -> None:
        self.set_started()

    def do_release(self) -> None:
        connected = sorted(self.connections)
        if connected and self._wait_released(connected):
            return
        try:
            tear_down = self.get("tearDown")
            if tear_down:
                self.execute(tear_down, timeout=300)
            if self.get("cleanProcesses"):
                self.execute(self._kill_user_processes())
            elif self.get("cleanProcessesAfter") and not self.host_spec().local:
                self.execute(self._kill_user_processes(f"{self.exp_home}/"))
        finally:
            self.set_released()

    def _wait_released(self, guids: list[int]) -> bool:
        """Park this release until every guid is RELEASED; True when it parked."""
        payload: dict[str, Any] = {"g": self.guid, "m": "release"}
        return self.ec._park_or_delay(payload, guids, ResourceState.RELEASED, 0.0)

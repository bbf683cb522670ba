"""The test suite never writes into the user's home.

A localhost node keeps ``${HOME}/nepi-usr`` and ``${HOME}/nepi-exp`` in the
worker's $HOME; a node reached over SSH in the login's, which sshd takes from
the passwd entry.  The suite runs with a temporary HOME (tests/conftest.py)
and its sshd sets the same one for its sessions.
"""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
from pathlib import Path

from .conftest import ROOT


def names_in(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()} if folder.is_dir() else set()


def test_a_run_of_linux_tests_leaves_nothing_in_the_home_it_was_started_with_nor_in_the_login_home(
    tmp_path: Path,
) -> None:
    user_home = tmp_path / "user-home"  # stands for the user's $HOME as `make test` finds it
    user_home.mkdir()
    inner = tmp_path / "inner"
    login_home = Path(pwd.getpwuid(os.getuid()).pw_dir)  # where an SSH login to this machine lands
    test = "tests/test_linux.py::test_echo_prints_hola_to_the_stdout_trace"  # [local] and [ssh]
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--basetemp={inner}", test],
        cwd=ROOT, env=dict(os.environ, HOME=str(user_home)), capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "2 passed" in proc.stdout
    assert names_in(user_home) == set(), "the run wrote into the HOME it was started with"
    # Each of the two tests (local, ssh) deployed its experiment into the run's temporary home.
    experiments = set().union(*(names_in(h / "nepi-exp") for h in inner.glob("home*")))
    assert len(experiments) == 2, experiments
    assert experiments.isdisjoint(names_in(login_home / "nepi-exp")), "the SSH test wrote into the login's home"

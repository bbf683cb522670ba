"""Collector: gathers a named trace from every RM connected to it, at release.

Files land in ``<resultsDir>/<exp_id>/<run_id>/[<subDir>/]<guid>.<name>``
(or ``<guid>.<rename>``) on the machine of the worker that releases it; with
the embedded default, the controller's machine.
"""

from __future__ import annotations

import os

from nepi_dist.model.attribute import Attribute, Flags
from nepi_dist.model.resource import ResourceManager
from nepi_dist.model.state import ResourceState
from nepi_dist.model.trace import TraceAttr

RESULTS_ENV = "NEPI_DIST_RESULTS_DIR"


class Collector(ResourceManager):
    _rtype = "Collector"
    _help = "Collects a trace of the connected RMs into the results tree at release"

    @classmethod
    def _register_attributes(cls) -> None:
        add = cls._register_attribute
        add(Attribute("traceName", "Name of the trace to collect", default="stdout", flags=Flags.ExecReadOnly))
        add(Attribute("subDir", "Folder under the run's results folder", flags=Flags.ExecReadOnly))
        add(Attribute("rename", "File name used instead of the trace name", flags=Flags.ExecReadOnly))
        add(Attribute("resultsDir", "Root of the results tree (default $NEPI_DIST_RESULTS_DIR or ./results)",
                      flags=Flags.ExecReadOnly))

    @property
    def run_dir(self) -> str:
        root = self.get("resultsDir") or os.environ.get(RESULTS_ENV) or "results"
        path = os.path.join(os.path.abspath(os.path.expanduser(root)), self.ec.exp_id, self.ec.run_id)
        sub = self.get("subDir")
        return os.path.join(path, sub) if sub else path

    def do_release(self) -> None:
        try:
            self.collect()
        finally:
            self.set_released()

    def collect(self) -> list[str]:
        """Write the trace of every connected RM that has it; return the files written."""
        name = self.get("traceName")
        rename = self.get("rename") or name
        os.makedirs(self.run_dir, exist_ok=True)
        written = []
        for rm in self.get_connected():
            if name not in {t.name for t in rm.get_traces()} or rm.state == ResourceState.NEW:
                continue
            data = self.ec.trace(rm.guid, name, TraceAttr.ALL)
            if data is None:
                continue
            path = os.path.join(self.run_dir, f"{rm.guid}.{rename}")
            with open(path, "wb") as f:
                f.write(data.encode() if isinstance(data, str) else data)
            written.append(path)
        self.info(f"collected {len(written)} {name} traces into {self.run_dir}")
        return written

"""Collector: gathers a named trace from every RM connected to it, at release (NEPI's ``Collector``).

Files land in the run's folder, ``ec.run_dir`` (``<local_dir>/<exp_id>/<run_id>``,
see :class:`~nepi_dist.ec.ExperimentController`), under ``subDir`` when set,
one per connected RM, named ``<label>.<trace name or rename>``: ``ping.stdout``
for the RM an experiment file labels ``ping``, ``application-2.stdout`` for
guid 2 of type ``linux::Application`` (see
:func:`~nepi_dist.model.trace.result_file_name`).  Should two RMs come to the
same name, the second one's gets ``-<guid>`` before its suffix.  The folder is
on the machine of the worker that releases the Collector; with the embedded
default, the controller's machine.
"""

from __future__ import annotations

import os

from nepi_dist.model.attribute import Attribute, Flags
from nepi_dist.model.resource import ResourceManager
from nepi_dist.model.state import ResourceState
from nepi_dist.model.trace import TraceAttr, result_file_name


class Collector(ResourceManager):
    _rtype = "Collector"
    _help = "Collects a trace of the connected RMs into the run's folder at release"

    @classmethod
    def _register_attributes(cls) -> None:
        add = cls._register_attribute
        add(Attribute("traceName", "Name of the trace to collect", default="stdout", flags=Flags.ExecReadOnly))
        add(Attribute("subDir", "Folder under the run's folder", flags=Flags.ExecReadOnly))
        add(Attribute("rename", "File suffix used instead of the trace name", flags=Flags.ExecReadOnly))
        add(Attribute("resultsDir", "Root used instead of the controller's local_dir (<root>/<exp_id>/<run_id>)",
                      flags=Flags.ExecReadOnly))

    @property
    def store_path(self) -> str:
        """The folder the traces are written to (NEPI's name)."""
        root = self.get("resultsDir")
        path = self.ec.run_dir if not root else \
            os.path.join(os.path.abspath(os.path.expanduser(root)), self.ec.exp_id, self.ec.run_id)
        sub = self.get("subDir")
        return os.path.join(path, sub) if sub else path

    run_dir = store_path

    def do_release(self) -> None:
        try:
            self.collect()
        finally:
            self.set_released()

    def collect(self) -> list[str]:
        """Write the trace of every connected RM that has it; return the files written."""
        name = self.get("traceName")
        suffix = self.get("rename") or name
        folder = self.store_path
        os.makedirs(folder, exist_ok=True)
        written: list[str] = []
        for rm in self.get_connected():
            if name not in {t.name for t in rm.get_traces()} or rm.state == ResourceState.NEW:
                continue
            data = self.ec.trace(rm.guid, name, TraceAttr.ALL)
            if data is None:
                continue
            path = os.path.join(folder, result_file_name(rm.label, suffix))
            if path in written:
                path = os.path.join(folder, result_file_name(f"{rm.label}-{rm.guid}", suffix))
            with open(path, "wb") as f:
                f.write(data.encode() if isinstance(data, str) else data)
            written.append(path)
        self.info(f"collected {len(written)} {name} traces into {folder}")
        return written

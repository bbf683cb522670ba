"""An RM type with a Credential attribute that its own code puts in a log line and an error.

External workers load it with ``--rm-module tests.secret_rms``; tests/test_secrets.py checks
that neither reaches a log, the event stream, a task message or a snapshot.
"""

from __future__ import annotations

from nepi_dist import Attribute, Flags, ResourceFactory, ResourceManager, clsinit_copy
from nepi_dist.model.resource import failtrap


@clsinit_copy
class SecretHolder(ResourceManager):
    """Reads its ``token`` at start, logs it and fails with it in the error (a careless RM)."""

    _rtype = "SecretHolder"

    @classmethod
    def _register_attributes(cls) -> None:
        cls._register_attribute(Attribute("token", "An API token", flags=Flags.Credential))
        cls._register_attribute(Attribute("note", "Not a secret"))

    @failtrap
    def do_start(self) -> None:
        token = self.get("token")
        self.info(f"logging in with token {token}")
        raise RuntimeError(f"the service refused token {token}")


ResourceFactory.register_type(SecretHolder)

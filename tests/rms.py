"""RM types used by the tests, NEPI's own test RMs brought to Python 3.

External workers load this module with ``--rm-module tests.rms``.
"""

from __future__ import annotations

import os
import random
import time

from nepi_dist import (
    Attribute,
    Flags,
    ResourceFactory,
    ResourceManager,
    ResourceState,
    Trace,
    Types,
    clsinit_copy,
)

#: Scale of the random sleeps NEPI's test RMs take (0 removes them).
SLEEP = 0.2


@clsinit_copy
class Channel(ResourceManager):
    _rtype = "Channel"


@clsinit_copy
class Interface(ResourceManager):
    _rtype = "Interface"

    def do_deploy(self) -> None:
        node = self.get_connected(Node.get_rtype())[0]
        chan = self.get_connected(Channel.get_rtype())[0]
        if node.state < ResourceState.PROVISIONED or chan.state < ResourceState.READY:
            self.ec.schedule("0.1s", self.deploy)
        else:
            time.sleep(SLEEP)
            super().do_deploy()


@clsinit_copy
class Node(ResourceManager):
    _rtype = "Node"

    def do_deploy(self) -> None:
        if self.state == ResourceState.NEW:
            self.discover()
            self.provision()
            self.ec.schedule("0.2s", self.deploy)
        elif self.state == ResourceState.PROVISIONED:
            for rm in self.get_connected(Interface.get_rtype()):
                if rm.state < ResourceState.READY:
                    self.ec.schedule("0.1s", self.deploy)
                    return
            super().do_deploy()


@clsinit_copy
class Application(ResourceManager):
    _rtype = "Application"

    @classmethod
    def _register_attributes(cls) -> None:
        cls._register_attribute(Attribute("command", "What to run", flags=Flags.ExecReadOnly))
        cls._register_attribute(Attribute("runtime", "Seconds it runs", type=Types.Double, default=0.0))

    @classmethod
    def _register_traces(cls) -> None:
        cls._register_trace(Trace("stdout", "Standard output"))

    def do_deploy(self) -> None:
        node = self.get_connected(Node.get_rtype())[0]
        if node.state < ResourceState.READY:
            self.ec.schedule("0.1s", self.deploy)
        else:
            time.sleep(random.random() * SLEEP)
            super().do_deploy()

    def do_start(self) -> None:
        super().do_start()
        self.ec.schedule(f"{self.get('runtime')}s", self.finish)


@clsinit_copy
class ErrorApplication(ResourceManager):
    _rtype = "ErrorApplication"

    def do_deploy(self) -> None:
        node = self.get_connected(Node.get_rtype())[0]
        if node.state < ResourceState.READY:
            self.ec.schedule("0.1s", self.deploy)
        else:
            raise RuntimeError("NOT A REAL ERROR. JUST TESTING")


@clsinit_copy
class Plain(ResourceManager):
    """Default lifecycle; finishes by itself ``runtime`` seconds after start."""

    _rtype = "Plain"

    @classmethod
    def _register_attributes(cls) -> None:
        cls._register_attribute(Attribute("runtime", "Seconds it runs", type=Types.Double, default=0.0))
        cls._register_attribute(
            Attribute("mode", "A choice", type=Types.Enumerate, allowed=["a", "b"], default="a")
        )
        cls._register_attribute(Attribute("count", "A bounded int", type=Types.Integer, range=(0, 10)))
        cls._register_attribute(Attribute("label", "Free text"))
        cls._register_attribute(Attribute("serial", "Set by the RM", flags=Flags.ReadOnly))

    def do_start(self) -> None:
        super().do_start()
        self.ec.schedule(f"{self.get('runtime')}s", self.finish)

    def echo(self, value: object) -> object:
        """An RM method with a JSON argument and result, for scheduling tests."""
        return {"guid": self.guid, "value": value}

    def boom(self) -> None:
        raise ValueError("boom on purpose")


@clsinit_copy
class SlowDeploy(Plain):
    """Deploys only after rescheduling its deploy ``rounds`` times, 0.2 s apart."""

    _rtype = "SlowDeploy"

    @classmethod
    def _register_attributes(cls) -> None:
        cls._register_attribute(Attribute("rounds", "Deploy reschedules left", type=Types.Integer, default=4))

    def do_deploy(self) -> None:
        left = self.get("rounds")
        if left > 0:
            self.set("rounds", left - 1)
            self.ec.schedule("0.2s", self.deploy)
        else:
            super().do_deploy()


@clsinit_copy
class Forever(ResourceManager):
    """Starts and never finishes by itself."""

    _rtype = "Forever"


@clsinit_copy
class FailingStart(ResourceManager):
    _rtype = "FailingStart"

    def do_start(self) -> None:
        raise RuntimeError("start fails on purpose")


@clsinit_copy
class BadRelease(ResourceManager):
    _rtype = "BadRelease"

    def do_release(self) -> None:
        raise RuntimeError("release fails on purpose")


@clsinit_copy
class TwoStep(ResourceManager):
    """Starts in two steps, as NEPI's own test RMs do: STARTED, ``hold`` seconds of work, FINISHED.

    Each run of its start appends a line to the file ``ledger`` names (when set).
    """

    _rtype = "TwoStep"

    @classmethod
    def _register_attributes(cls) -> None:
        cls._register_attribute(Attribute("hold", "Seconds between STARTED and FINISHED", type=Types.Double,
                                          default=0.0))
        cls._register_attribute(Attribute("ledger", "File each start appends a line to"))

    def do_start(self) -> None:
        ledger = self.get("ledger")
        if ledger:
            with open(ledger, "a") as f:
                f.write(f"{self.guid} {os.getpid()} {'resumed' if self._resumed else 'first'}\n")
        self.set_started()
        time.sleep(float(self.get("hold")))
        self.set_finished()


TYPES = [Channel, Interface, Node, Application, ErrorApplication, Plain, SlowDeploy, Forever, FailingStart, BadRelease,
         TwoStep]
for _t in TYPES:
    ResourceFactory.register_type(_t)

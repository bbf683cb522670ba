"""LinuxChannel: the link that LinuxInterfaces attach to (NEPI's ``LinuxChannel``).

As in NEPI, a channel does nothing on any host: it names the link that the
interfaces connected to it share, and an interface connected to a channel
deploys only once the channel is READY (so a channel's conditions hold back
every interface on it).
"""

from __future__ import annotations

from nepi_dist.model.resource import ResourceManager


class LinuxChannel(ResourceManager):
    """A link between LinuxInterfaces; its interfaces are the RMs connected to it."""

    _rtype = "linux::Channel"
    _aliases = ("LinuxChannel",)
    _help = "Names the link that the LinuxInterfaces connected to it share"
    _platform = "linux"

    @property
    def interfaces(self) -> list[ResourceManager]:
        """The interfaces on this channel."""
        from nepi_dist.resources.linux.interface import LinuxInterface

        return [rm for rm in self.get_connected() if isinstance(rm, LinuxInterface)]

"""nepi_dist: NEPI's experiment controller on Celery workers and Redis."""

from .attribute import Attribute, Flags, Types
from .ec import ECState, ExperimentController
from .errors import (
    ActionError,
    AttributeValueError,
    ConditionError,
    ControllerClosedError,
    DuplicateGuidError,
    ECFailureError,
    ExperimentIdError,
    NepiError,
    NoWorkerError,
    ReadOnlyAttributeError,
    RemoteReadError,
    ResourceFailedError,
    TimeFormatError,
    UnknownAttributeError,
    UnknownGuidError,
    UnknownResourceTypeError,
    UnknownTraceError,
    WaitTimeoutError,
)
from .resource import (
    ResourceFactory,
    ResourceManager,
    ResourceRegistry,
    clsinit,
    clsinit_copy,
    failtrap,
)
from .scheduler import TaskStatus
from .state import ResourceAction, ResourceState, ResourceState2str
from .store import FailureLevel
from .trace import Trace, TraceAttr

__all__ = [
    "ActionError",
    "Attribute",
    "AttributeValueError",
    "ConditionError",
    "ControllerClosedError",
    "DuplicateGuidError",
    "ECFailureError",
    "ECState",
    "ExperimentController",
    "ExperimentIdError",
    "FailureLevel",
    "Flags",
    "NepiError",
    "NoWorkerError",
    "ReadOnlyAttributeError",
    "RemoteReadError",
    "ResourceAction",
    "ResourceFactory",
    "ResourceFailedError",
    "ResourceManager",
    "ResourceRegistry",
    "ResourceState",
    "ResourceState2str",
    "TaskStatus",
    "TimeFormatError",
    "Trace",
    "TraceAttr",
    "Types",
    "UnknownAttributeError",
    "UnknownGuidError",
    "UnknownResourceTypeError",
    "UnknownTraceError",
    "WaitTimeoutError",
    "clsinit",
    "clsinit_copy",
    "failtrap",
]

"""hcollectives: MPI-style collectives (Map-AllReduce, Map-AllGather) for Hadoop
streaming and mrjob jobs.

    from hcollectives import MRCollectiveJob, AllReduce

    class MRKMeans(MRCollectiveJob):
        COLLECTIVE = AllReduce("sum")
        ...
"""

from .errors import (
    AuthenticationError,
    BadMapperOutput,
    CollectiveTimeout,
    ConfigurationError,
    HCollectivesError,
    JobFailed,
    ProtocolError,
    SessionAborted,
    ShapeMismatch,
    StoreError,
)
from .frontends.mrjob_job import AllGather, AllReduce, MRCollectiveJob

__version__ = "0.1.0"


def __getattr__(name: str):
    # The driver imports trio; map tasks import this package and never need it.
    if name in ("IterationTiming", "LoopResult"):
        from .frontends import driver

        return getattr(driver, name)
    raise AttributeError(f"module 'hcollectives' has no attribute {name!r}")

__all__ = [
    "AllGather",
    "AllReduce",
    "AuthenticationError",
    "BadMapperOutput",
    "CollectiveTimeout",
    "ConfigurationError",
    "HCollectivesError",
    "IterationTiming",
    "JobFailed",
    "LoopResult",
    "MRCollectiveJob",
    "ProtocolError",
    "SessionAborted",
    "ShapeMismatch",
    "StoreError",
    "__version__",
]

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
from .frontends.driver import IterationTiming, LoopResult
from .frontends.mrjob_job import AllGather, AllReduce, MRCollectiveJob

__version__ = "0.1.0"

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

"""hcollectives: MPI-style collectives (Map-AllReduce, Map-AllGather) for Hadoop
streaming and mrjob jobs.

    from hcollectives import MRCollectiveJob, AllReduce

    class MRKMeans(MRCollectiveJob):
        COLLECTIVE = AllReduce("sum")
        ...
"""

from .errors import (
    AuthenticationError,
    BadInputRecord,
    BadMapperOutput,
    CollectiveTimeout,
    CommandFailed,
    ConfigurationError,
    HCollectivesError,
    JobFailed,
    ProtocolError,
    RunInterrupted,
    SessionAborted,
    ShapeMismatch,
    StoreError,
)

__version__ = "0.1.0"


# Imported on first use: a streaming map task imports this package on every
# start and needs neither mrjob nor trio (~0.3 s of start-up per task).
_LAZY = {
    "AllGather": "jobs.collectives",
    "AllReduce": "jobs.collectives",
    "MRCollectiveJob": "jobs.mrjob_job",
    "IterationTiming": "driver.loop",
    "LoopResult": "driver.loop",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'hcollectives' has no attribute {name!r}")

__all__ = [
    "AllGather",
    "AllReduce",
    "AuthenticationError",
    "BadInputRecord",
    "BadMapperOutput",
    "CollectiveTimeout",
    "CommandFailed",
    "ConfigurationError",
    "HCollectivesError",
    "IterationTiming",
    "JobFailed",
    "LoopResult",
    "MRCollectiveJob",
    "ProtocolError",
    "RunInterrupted",
    "SessionAborted",
    "ShapeMismatch",
    "StoreError",
    "__version__",
]

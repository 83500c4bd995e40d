"""What a resident map task is launched with: the environment the driver sets for it.

Shared by the driver (driver/resident.py, which sets it) and the task
(jobs/resident_task.py, which reads it); standard library only, as tasks
import it before anything else.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

RESIDENT_ENV = "HCOLLECTIVES_RESIDENT"  # "1": this task runs the whole loop
LAST_ENV = "HCOLLECTIVES_LAST_ITERATION"  # the task stops after contributing to it
STORE_ENV = "HCOLLECTIVES_STORE"  # where a retried attempt finds the last finished iteration


def is_resident(env: Mapping[str, str] = os.environ) -> bool:
    return env.get(RESIDENT_ENV) == "1"


def attempt_number(attempt: str) -> int:
    """Hadoop's attempt ids end in _<n> (0 for the first attempt of a task)."""
    found = re.search(r"_(\d+)$", attempt)
    return int(found.group(1)) if found else 0

"""Keep the session secret out of everything the driver shows.

The secret travels to tasks as a private file (loop.py), so no command line
or job configuration of ours holds it. This is the second line: while a run
is on, every log record that reaches a handler (mrjob logs whole command
lines when a job fails, e.g. `hadoop jar ...` with every -cmdenv) and every
error the driver raises has the secret replaced by a marker, wherever it
came from (a user's own -cmdenv, a wrapper script that echoed it).
"""

from __future__ import annotations

import logging

MARK = "<redacted>"


class Redactor(logging.Filter):
    def __init__(self, *secrets: str) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if s]
        self._handlers: list[logging.Handler] = []

    def text(self, value: str) -> str:
        for secret in self.secrets:
            value = value.replace(secret, MARK)
        return value

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = self.text(message)
        if cleaned != message:
            record.msg, record.args = cleaned, ()
        if record.exc_info and record.exc_info[1] is not None:
            text = logging.Formatter().formatException(record.exc_info)
            if self.text(text) != text:
                record.exc_info, record.exc_text = None, self.text(text)
        return True

    def install(self) -> "Redactor":
        """Attach to every handler that exists now (root's and each logger's)."""
        loggers = [logging.getLogger()] + [lg for lg in logging.Logger.manager.loggerDict.values()
                                           if isinstance(lg, logging.Logger)]
        for lg in loggers:
            for handler in lg.handlers:
                if self not in handler.filters:
                    handler.addFilter(self)
                    self._handlers.append(handler)
        return self

    def remove(self) -> None:
        for handler in self._handlers:
            handler.removeFilter(self)
        self._handlers.clear()

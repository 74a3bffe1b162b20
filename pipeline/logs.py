"""Log filters for the run's Prefect loggers, installed when `flows` is imported (in
`pvs run`, and in a worker's flow-run process alike).

1. Prefect logs every exception that ends a task or flow with its traceback. For our
   `UserError`s (a busy run root, a config that cannot work, a full disk) the message
   says all there is: the traceback is dropped and the line shows the message alone.
2. Credentials are masked (`pipeline/redaction.py`); this filter renders tracebacks,
   so it comes second, after the first has looked at the exception.
"""

import logging

from pipeline.redaction import RUN_LOGGERS, install_log_redaction
from tfrecords.errors import UserError


class UserErrorsWithoutTraceback(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, UserError):
            record.msg, record.args = f"{type(error).__name__}: {error}", ()
            record.exc_info = record.exc_text = None
        return True


def install_log_filters() -> None:
    """Add both filters to Prefect's run loggers, in order (once, however often it is called)."""
    for name in RUN_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(existing, UserErrorsWithoutTraceback) for existing in logger.filters):
            logger.addFilter(UserErrorsWithoutTraceback())
    install_log_redaction()

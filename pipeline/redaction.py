"""Mask credentials in text before it is logged or printed.

What is masked (replaced by `***`, or by the variable's name for the path):
* the password of a URL, `scheme://user:SECRET@host` (also `scheme:/user:SECRET@host`,
  which is what `pathlib.Path` makes of a URL);
* the value of a query parameter named like a credential: `token`, `access_token`,
  `key`, `api_key`, `signature`, `X-Goog-Signature`, `X-Amz-Credential`, `secret`,
  `password`, `sig`, ...;
* the value of GOOGLE_APPLICATION_CREDENTIALS (the path of a service-account key),
  read when the text is masked, so a variable set after start-up is masked too.

`RedactingFilter` applies `redact` to log records (message, traceback, stack), and
`install_log_redaction` puts it on the loggers of Prefect runs: what the flow and its
tasks log reaches the console and the Prefect server masked.
"""

import logging
import os
import re

MASK = "***"
CREDENTIALS_VARIABLE = "GOOGLE_APPLICATION_CREDENTIALS"
RUN_LOGGERS = ("prefect.flow_runs", "prefect.task_runs")  # what Prefect sends to the server

_URL_PASSWORD = re.compile(r"(\b[a-z][a-z0-9+.-]*:/{1,2}[^/\s:@]*:)[^@\s/]+(?=@)", re.IGNORECASE)
_CREDENTIAL_PARAMETER = re.compile(
    r"([?&;](?:sig|[\w.-]*(?:token|key|signature|secret|password|passwd|credential)[\w.-]*)=)[^&#;\s'\"<>]+",
    re.IGNORECASE,
)


def redact(text: str) -> str:
    """`text` with URL passwords, credential query parameters and the service-account path masked."""
    text = _URL_PASSWORD.sub(rf"\g<1>{MASK}", text)
    text = _CREDENTIAL_PARAMETER.sub(rf"\g<1>{MASK}", text)
    key_file = os.environ.get(CREDENTIALS_VARIABLE, "").strip()
    if key_file:
        text = text.replace(key_file, f"${CREDENTIALS_VARIABLE}")
    return text


class RedactingFilter(logging.Filter):
    """Masks a record in place before any handler formats it. The traceback is rendered
    and masked here, and `exc_info` dropped, so no formatter can print the raw one."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError, KeyError):  # a malformed record: logging reports it as usual
            return True
        record.msg, record.args = redact(message), ()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        record.exc_info = None
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


def install_log_redaction() -> None:
    """Put one RedactingFilter on the loggers of Prefect's flow and task runs (idempotent).
    A logger's filter sees each record before its handlers and its parents' handlers, so
    the console and the server (Prefect's API handler) both get the masked record."""
    for name in RUN_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(existing, RedactingFilter) for existing in logger.filters):
            logger.addFilter(RedactingFilter())

"""Log filters for the run's Prefect loggers, installed when `flows` is imported (in
`pvs run`, and in a worker's flow-run process alike).

1. Prefect logs every exception that ends a task or flow with its traceback. For our
   `UserError`s (a busy run root, a config that cannot work, a full disk) the message
   says all there is: the traceback is dropped and the line shows the message alone.
2. Credentials are masked (`pipeline/redaction.py`); this filter renders tracebacks,
   so it comes second, after the first has looked at the exception.
3. TensorFlow's warning that Keras' predict step was traced again (`KerasPredictRetracing`).
4. Keras' "Your input ran out of data" warning (`OUT_OF_DATA`), and no other warning.
In a flow-run process a worker started, TensorFlow's known C++ lines are also dropped from
its stderr (`pipeline/console.py`), as `pvs` drops them from its own.
"""

import logging
import os
import re
import warnings

from pipeline.redaction import RUN_LOGGERS, install_log_redaction
from tfrecords.errors import UserError


class UserErrorsWithoutTraceback(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, UserError):
            record.msg, record.args = f"{type(error).__name__}: {error}", ()
            record.exc_info = record.exc_text = None
        return True


class KerasPredictRetracing(logging.Filter):
    """Drops TensorFlow's "N out of the last M calls to <function TensorFlowTrainer.
    make_predict_function...> triggered tf.function retracing" warning, and no other.

    Harmless, and not ours to avoid: scoring predicts with a new model each phase (its own
    predict function, traced anew) on batches of several sizes (a split's last batch, the
    val and test splits), which Keras' `reduce_retracing` generalises after the second
    size. TensorFlow counts the traces of every model's predict function together (one
    Python function), so a few phases make "5 out of the last 7". Padding batches to one
    size would avoid the traces but could change the numbers a model computes."""

    RETRACING = re.compile(r"calls to <function TensorFlowTrainer\.make_predict_function\.<locals>\.\w+ at 0x[0-9a-f]+> "
                           r"triggered tf\.function retracing\.")

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.RETRACING.search(record.getMessage())


# Keras warns "Your input ran out of data; interrupting training" at the end of every epoch
# whose dataset does not say its length (the reader's interleave and shuffle hide it): it
# finds the epoch's end by reaching the data's, which is how our epochs are defined (each
# epoch's dataset is that epoch's batches, once). Telling Keras the count instead
# (tf.data's assert_cardinality) would be cleaner but changes how a MirroredStrategy
# splits the last batch, and so its scores (tests/test_distribute.py): the warning is dropped.
OUT_OF_DATA = r"Your input ran out of data; interrupting training"


def install_log_filters() -> None:
    """Add the filters to their loggers, in order (once, however often it is called); in a
    flow run's process (PREFECT__FLOW_RUN_ID set), filter its stderr too."""
    for name in RUN_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(existing, UserErrorsWithoutTraceback) for existing in logger.filters):
            logger.addFilter(UserErrorsWithoutTraceback())
    install_log_redaction()
    tensorflow = logging.getLogger("tensorflow")
    if not any(isinstance(existing, KerasPredictRetracing) for existing in tensorflow.filters):
        tensorflow.addFilter(KerasPredictRetracing())
    warnings.filterwarnings("ignore", message=OUT_OF_DATA, category=UserWarning)
    if os.environ.get("PREFECT__FLOW_RUN_ID"):
        from pipeline.console import filter_stderr

        filter_stderr()

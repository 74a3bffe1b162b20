"""submission.csv, the leaderboard-style result of a run: its one writer and its one reader.

The eProduct layout: a `query_id,index_ids` header, then one row per query with its
index ids, nearest first, separated by spaces. An id is the image's path in the source,
which may hold a space (`shot 03.png`) and would then split into two ids. So every id,
query ids too, has its `%`, whitespace and control characters (newlines) percent-encoded
as UTF-8, as in a URL (`shot%2003.png`); every other character, non-ASCII letters
included, is written as it is, so ordinary ids read exactly as before. The csv module
quotes a field holding a comma or a quote. Decoding is exact because `%` itself is
always encoded.
"""

import csv
import io
import re
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import quote, unquote

from phases.errors import SubmissionError
from tfrecords.files import write_text_atomic

SUBMISSION_NAME = "submission.csv"
SUBMISSION_HEADER = ["query_id", "index_ids"]
# `\s` is every character str.split() splits on (str.isspace), \x85 and \u2028 included.
_ENCODED = re.compile(r"[%\s\x00-\x1f\x7f-\x9f]")


def submission_id(image_id: str) -> str:
    """`image_id` as submission.csv spells it: `%`, whitespace and control characters
    percent-encoded as UTF-8 (`shot 03.png` -> `shot%2003.png`), the rest as it is."""
    return _ENCODED.sub(lambda match: quote(match.group(), safe=""), image_id)


def write_submission(path: Path, rows: Iterable[tuple[str, list[str]]]) -> Path:
    """Write `path` atomically from (query id, its index ids nearest first) pairs; returns `path`."""
    text = io.StringIO()
    table = csv.writer(text, lineterminator="\n")
    table.writerow(SUBMISSION_HEADER)
    for query_id, index_ids in rows:
        table.writerow([submission_id(query_id), " ".join(map(submission_id, index_ids))])
    write_text_atomic(path, text.getvalue())
    return path


def read_submission(path: Path) -> dict[str, list[str]]:
    """{query id: its index ids, nearest first} of a file `write_submission` wrote, the ids
    decoded back to the images' ids. Raises SubmissionError naming the file and line."""
    with open(path, newline="", encoding="utf-8") as handle:
        table = csv.reader(handle)
        if next(table, None) != SUBMISSION_HEADER:
            raise SubmissionError(f"{path}: line 1 is not the header {','.join(SUBMISSION_HEADER)}")
        ranked: dict[str, list[str]] = {}
        for row in table:
            if len(row) != 2 or unquote(row[0]) in ranked:
                raise SubmissionError(f"{path}: line {table.line_num} is not a new query id and its index ids")
            ranked[unquote(row[0])] = [unquote(index_id) for index_id in row[1].split(" ") if index_id]
    return ranked

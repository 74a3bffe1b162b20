"""A write that the disk refuses (full, quota, file size limit) names the file and keeps
its previous version; no temporary file is left behind."""

import subprocess
import sys

from conftest import REPO

# The child lowers its own file size limit below what it writes: the kernel then refuses
# the write with EFBIG, the nearest a test gets to a full disk without root (ENOSPC is
# handled the same way, by errno).
WRITER = """
import resource, sys
from pathlib import Path
from tfrecords.files import write_bytes_atomic
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY))
write_bytes_atomic(Path(sys.argv[1]), b"x" * 10_000)
"""


def test_a_refused_write_names_the_file_and_keeps_its_previous_content(tmp_path):
    target = tmp_path / "scores.csv"
    target.write_text("the previous scores\n")
    result = subprocess.run([sys.executable, "-c", WRITER, str(target)], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert result.returncode == 1
    assert (f"StorageError: {target}: could not be written (File too large); its previous version is kept. "
            "Free some space (or raise the limit) and run the same command again to resume") in result.stderr
    assert target.read_text() == "the previous scores\n"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["scores.csv"]

"""What `pvs` prints: TensorFlow's known C++ lines dropped (pipeline/console.py), every
other line passed through as it was, in order."""

import re

import pytest
from conftest import tiny_pipeline, write_yaml
from test_run import pvs_run

from pipeline.console import NO_GPU_NOTE, filtered

# One of each known line, as TensorFlow 2.21 prints them on a CPU machine.
KNOWN = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    ("I0000 00:00:1796587318.136745     870 port.cc:153] oneDNN custom operations are on. You may see slightly "
    "different numerical results due to floating-point round-off errors from different computation orders. To "
    "turn them off, set the environment variable `TF_ENABLE_ONEDNN_OPTS=0`."),
    ("E0000 00:00:1796587330.596913     870 util.cc:131] oneDNN supports DT_UINT8 only on platforms with AVX-512. "
    "Falling back to the default Eigen-based implementation if present."),
    ("E0000 00:00:1796587337.652131     870 node_def_util.cc:682] NodeDef mentions attribute use_unbounded_threadpool "
    "which is not in the op definition: Op<name=MapDataset; signature=input_dataset:variant, other_arguments: -> "
    "handle:variant; attr=f:func> This may be expected if your graph generating binary is newer  than this binary. "
    "Unknown attributes will be ignored. NodeDef: {{node ParallelMapDatasetV2/_19}}"),
]
NO_GPU = [
    ("I0000 00:00:1796587318.141767     870 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will "
    "not be used."),
    ("E0000 00:00:1796587322.381486     870 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: Failed "
    "call to cuInit: UNKNOWN ERROR (303)"),
]
# What must come through: an unknown C++ error, a driver that is there and fails, a Python traceback.
REAL = [
    "E0000 00:00:1796587330.596913     870 something.cc:12] something real went wrong",
    ("E0000 00:00:1796587322.381486     870 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: Failed "
    "call to cuInit: CUDA_ERROR_NO_DEVICE: no CUDA-capable device is detected"),
    "Traceback (most recent call last):",
    '  File "flows.py", line 1, in <module>',
    "ValueError: oneDNN custom operations are on",
]
# What the noise of a `pvs run` looked like (a line matching any is noise).
NOISE = re.compile(r"absl::InitializeLog|oneDNN|cuda|cuInit|use_unbounded_threadpool|database is locked|"
                   r"send_telemetry_heartbeat|ran out of data|triggered tf\.function retracing|^Traceback", re.MULTILINE)


def lines(*texts: str, end: str = "\n") -> list[bytes]:
    return [(text + end).encode() for text in texts]


def test_known_lines_are_dropped_and_every_other_line_passes_unchanged_in_order():
    mixed = [KNOWN[0], REAL[0], KNOWN[1], *NO_GPU, REAL[1], KNOWN[2], *REAL[2:], KNOWN[3], NO_GPU[1]]
    assert list(filtered(lines(*mixed))) == [*lines(REAL[0]), NO_GPU_NOTE, *lines(*REAL[1:])]


def test_a_known_message_at_another_level_or_from_another_file_passes():
    elsewhere = KNOWN[2].replace("util.cc", "other.cc")
    as_info = NO_GPU[1].replace("E0000", "I0000")
    assert list(filtered(lines(elsewhere, as_info, end="\r\n"))) == lines(elsewhere, as_info, end="\r\n")


@pytest.mark.slow
def test_pvs_run_prints_its_scores_and_none_of_the_known_noise(ingested, tmp_path, monkeypatch):
    # Graph mode (`eager: false`) and determinism, as the noise came; one phase of one epoch.
    config = write_yaml(tmp_path / "top.yaml", tiny_pipeline(ingested, {"runtime": {"eager": False}}, phases=("top",)))
    monkeypatch.delenv("PREFECT_SERVER_ANALYTICS_ENABLED")  # conftest turns it off; pvs must do it itself
    printed = pvs_run(config, tmp_path / "run")
    assert NOISE.findall(printed) == []
    assert re.search(r"^top +1 ", printed, re.MULTILINE)  # the scores table
    assert re.search(r"temporary Prefect server on .* log .*temporary-server\.log", printed)

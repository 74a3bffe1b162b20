"""Run one phase in its own process, for tests that kill it (python tests/run_phase.py ARGS.json).

ARGS.json: {"config": <PipelineConfig as dict>, "data_dir", "work_dir", "phase",
"previous": [path, sha256] or null, "kill_after_epoch": int or null, "logical_cpus":
int or absent}. With a kill epoch, the process SIGKILLs itself right after that epoch's
checkpoint is saved (a real kill: no cleanup runs; only a chief reports, so under a
multi-worker strategy the other workers must be killed by the caller). Otherwise it
prints the result as JSON. `logical_cpus` splits the CPU into that many logical devices
before TensorFlow starts (what `runtime.strategy: mirrored` then mirrors over); the
strategy itself is the config's `runtime.strategy`, with TF_CONFIG from the environment.
"""

import json
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from phases.config import PipelineConfig
from phases.controller import run_phase
from phases.unit import PhaseContext
from pipeline.runtime import configure_runtime


def main() -> None:
    arguments = json.loads(Path(sys.argv[1]).read_text())
    if arguments.get("logical_cpus"):
        import tensorflow as tf

        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * arguments["logical_cpus"])
    config = PipelineConfig.model_validate(arguments["config"])
    configure_runtime(config)
    kill_after = arguments.get("kill_after_epoch")

    def report(row):
        if kill_after is not None and row["epoch"] == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)

    phase = config.phase(arguments["phase"])
    context = PhaseContext(data_dir=Path(arguments["data_dir"]), work_dir=Path(arguments["work_dir"]), report=report)
    previous = arguments.get("previous")
    result = run_phase(phase, config, context, (Path(previous[0]), previous[1]) if previous else None)
    print(json.dumps({"model_path": str(result.model_path), "sha256": result.model_sha256, "rows": result.rows,
                      "final_scores": result.final_scores, "resumed_after_epoch": result.resumed_after_epoch,
                      "resumed_at_step": result.resumed_at_step, "extra": result.extra}))


if __name__ == "__main__":
    main()

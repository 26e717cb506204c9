r"""Train a model: python train.py --config configs/default.py --workdir DIR [--config.key=value ...]

The config file's get_config() gives every key; overrides on the command line must name existing
keys. Running the same command again resumes from the newest checkpoint in DIR.

Multi-host: on Cloud TPU pod slices the hosts find each other (jax.distributed.initialize with no
arguments); elsewhere run one process per host with --coordinator_address=HOST:PORT
--num_processes=N --process_id=I.
"""

import sys

from absl import flags
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", None, "Training config file (configs/*.py).", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory (local or gs://) for checkpoints, metrics and config.")
flags.DEFINE_string("coordinator_address", None, "Multi-host: HOST:PORT of process 0's coordinator.")
flags.DEFINE_integer("num_processes", None, "Multi-host: number of processes.")
flags.DEFINE_integer("process_id", None, "Multi-host: this process's index in [0, num_processes).")
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS


CONFIG_ERRORS = (AttributeError, KeyError, TypeError, ValueError, flags.Error)


def explain_config_error(argv: list[str], error: Exception) -> str:
    """One line for a bad --config.* override (unknown key, bad type) or another bad flag."""
    bad = str(error).strip("\"'")
    culprit = next((a for a in argv if a.startswith("--config.") and bad and bad in a), None)
    where = f" in {culprit}" if culprit else ""
    return (
        f"invalid config override{where}: {type(error).__name__}: {bad} (overrides must name a key that "
        "the config file defines, with a value of its type)"
    )


def main(argv):
    from sarf_jax import parallel

    parallel.initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    from sarf_jax.train import train_and_evaluate

    try:
        train_and_evaluate(FLAGS.config, FLAGS.workdir)
    except FloatingPointError as error:  # the run diverged: not a usage error
        print(f"train.py: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    from sarf_jax import cli

    cli.run(main, "train.py", flag_errors=CONFIG_ERRORS, explain=explain_config_error)

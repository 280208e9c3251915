r"""Train, evaluate, predict with or export an image classifier.

    python launch.py --config=configs/resnet50.py --workdir=runs/r50 \
        --config.data_dir=/data/ILSVRC2012 --config.batch_size=1024
    python launch.py --config=configs/resnet50.py --workdir=runs/r50 --mode=eval
    python launch.py --config=configs/resnet50.py --workdir=runs/r50 --mode=infer \
        --config.infer_path=photos/
    python launch.py --config=configs/resnet50.py --workdir=runs/r50 --mode=export

eval, infer and export use the workdir's newest checkpoint, or --config.pretrained_model=PATH
(a checkpoint of ours or a converted release).

Any config field can be overridden with ``--config.<field>=<value>``; unknown fields are
rejected. The fields, their defaults and meaning: flaxcls/config.py and the README's
configuration table. ``--config.<field>=None`` unsets a field that starts unset (the preprocessing fields:
the model's value is used again). Re-running the same command resumes from the workdir's newest checkpoint.
Multi-host: started under SLURM (one task per host) or with --coordinator_address,
--num_processes and --process_id (or the JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and
JAX_PROCESS_ID environment variables) every process joins one data-parallel job.
"""

from __future__ import annotations

import logging
import os
import sys

from absl import app, flags
from ml_collections import config_flags


def _config_error(e: Exception) -> None:
    """A config file or ``--config.<field>`` override that cannot be applied (a misspelt field,
    a file that does not exist): one line instead of ml_collections' traceback."""
    msg = e.args[0] if len(e.args) == 1 and isinstance(e.args[0], str) else str(e)
    msg = " ".join(msg.replace("\\n", " ").replace("\\'", "").split())
    if len(msg) > 1 and msg[0] == msg[-1] == "'":  # a KeyError's repr
        msg = msg[1:-1]
    sys.stderr.write(f"ERROR --config: {msg}\n")
    sys.exit(2)


_CONFIG_ERRORS = (AttributeError, KeyError, OSError, TypeError, ValueError)
try:  # overrides are matched against the default config file here, at definition
    config_flags.DEFINE_config_file(
        "config", os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "digits.py"),
        "Config file (a python file with get_config()).",
        lock_config=True,
    )
except _CONFIG_ERRORS as e:
    _config_error(e)
flags.DEFINE_string("workdir", None, "Checkpoints, logs and results go here (model_save_dir).")
flags.DEFINE_enum("mode", "train", ["train", "eval", "infer", "export"],
                  "train (with eval at the end); eval (top-1/top-5 of a checkpoint); infer "
                  "(top-k labels for config.infer_path); export (a jax.export serving model).")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 for multi-host runs.")
flags.DEFINE_integer("num_processes", None, "Number of processes in a multi-host run.")
flags.DEFINE_integer("process_id", None, "This process's index in a multi-host run.")
flags.DEFINE_string("compilation_cache_dir", None,
                    "Persistent XLA cache; default <user cache dir>/flaxcls/jax.")
FLAGS = flags.FLAGS
# --config.<field>=None arguments, taken out of sys.argv before flag parsing (which would type
# "None" as the field's int or tuple) and applied to the loaded config in main.
NONE_FIELDS: list[str] = []
_DISTRIBUTED = [False]  # set by main: this process joined a multi-process job


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not FLAGS.workdir:
        raise app.UsageError("--workdir is required (checkpoints and logs go there)")
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stdout,
        force=True,
    )
    # Orbax and jax report every save step at INFO through absl; keep the console readable.
    logging.getLogger("absl").setLevel(logging.WARNING)
    logging.getLogger("absl").addFilter(_quiet_expected_warnings)
    # jax's INFO that it looked for a TPU on a machine without one.
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
    from flaxcls import parallel
    from flaxcls.checkpoint import CheckpointError
    from flaxcls.config import ConfigError, apply_none_overrides
    from flaxcls.registry import UnknownModelError

    _DISTRIBUTED[0] = parallel.initialize_distributed(
        FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    try:
        config = FLAGS.config
        _ = config.model  # a config file that failed to load raises on first use
    except _CONFIG_ERRORS as e:
        _config_error(e)
    try:
        apply_none_overrides(config, NONE_FIELDS)
    except ConfigError as e:
        _user_error(e)
    workdir = os.path.abspath(FLAGS.workdir)  # Orbax writes and reads absolute paths only
    if config.compilation_cache:
        parallel.enable_compilation_cache(FLAGS.compilation_cache_dir)
    from flaxcls import storage
    from flaxcls.storage import StorageError
    from flaxcls.train.monitor import TrainingDiverged
    from flaxcls.workdir_lock import WorkdirInUse

    try:
        if FLAGS.mode == "train":
            from flaxcls.train.loop import train_and_evaluate

            train_and_evaluate(config, workdir)
        elif FLAGS.mode == "eval":
            from flaxcls.evaluate import run_eval

            run_eval(config, workdir)
        elif FLAGS.mode == "infer":
            from flaxcls.infer import run_infer

            run_infer(config, workdir)
        else:
            from flaxcls.export import export_model

            out = export_model(config, workdir)
            logging.getLogger("flaxcls").info("exported %s to %s", config.model, out)
    except (ConfigError, CheckpointError, FileNotFoundError, UnknownModelError,
            WorkdirInUse) as e:
        _user_error(e)
    except TrainingDiverged as e:
        logging.getLogger("flaxcls").error("%s", e)
        _finish(3)
    except StorageError as e:
        logging.getLogger("flaxcls").error("%s", e)
        _finish(storage.EXIT_CODE)
    except ValueError as e:
        from flaxcls.data import DataError

        if isinstance(e, DataError):
            _user_error(e)
        raise
    _finish(0)


def _quiet_expected_warnings(record: logging.LogRecord) -> bool:
    """Drops Orbax's warnings that a read-only checkpoint manager (how eval, infer and export
    read a workdir that a training job may be writing) is read-only: expected, and they read
    like a permissions problem."""
    msg = record.getMessage()
    return not msg.startswith(("CheckpointManagerOptions.read_only=True",
                               "Given directory is read only"))


def _user_error(e: Exception) -> None:
    """Something the user typed or pointed at is wrong: one clear message, no deep traceback."""
    logging.getLogger("flaxcls").error("%s", e)
    _finish(2)


def _finish(code: int) -> None:
    """Exits now that the work is done: the loop has closed its checkpointer (waiting for every
    save), its writers and its input. A normal interpreter exit would then wait, for up to a
    minute, on tf.data's autotuning thread, and print Orbax's late asyncio callbacks."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    if _DISTRIBUTED[0]:
        import jax

        jax.distributed.shutdown()
    os._exit(code)


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's parsing (its own message for a bad flag value), with ``_config_error`` for a
    config file or override that cannot be applied."""
    try:
        return FLAGS(argv)
    except flags.Error as e:  # as absl's own parser reports it
        text = str(e)
        last = ([line for line in text.splitlines() if line.strip()] or [""])[-1]
        if "Error whilst parsing config file" in text and last.startswith("flaxcls."):
            # get_config() raised one of our errors (a recipe name it does not know):
            # ml_collections puts the whole traceback into the message; its last line is the
            # error. Other errors (a config file with a syntax error) keep the traceback.
            _config_error(ValueError(last.split(": ", 1)[-1]))
        sys.stderr.write(f"FATAL Flags parsing error: {e}\nPass --helpshort or --helpfull to see "
                         "help on flags.\n")
        sys.exit(1)
    except _CONFIG_ERRORS as e:
        _config_error(e)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from flaxcls.config import split_none_overrides

    sys.argv, NONE_FIELDS[:] = split_none_overrides(sys.argv)
    app.run(main, flags_parser=_parse_flags)

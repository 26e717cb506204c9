r"""Evaluate a model under token-reduction settings: accuracy, GFLOPs and images/s, table and plot.

    python eval.py --workdir DIR [--reduction none --reduction sarf_tome:keep=0.6 ...]
    python eval.py --workdir DIR --sweep configs/sweeps/<name>.py [--mesh data:-1]

DIR is a training workdir (train.py) or a converted official checkpoint (python -m
sarf_jax.convert); for the latter name the data with --data (e.g. tfds:imagenet2012 --data_dir).
Both the raw and the EMA weights are evaluated when the workdir has both. Results go to
DIR/results.json (written entry by entry; a rerun skips finished entries), results.csv,
results.md and accuracy_vs_gflops.png.

Accuracy runs on every device (--mesh; by default the training run's config.mesh, else all
devices on the data axis), each host reading its own share of the split; images/s is measured on
one device. Multi-host: run one process per host with --coordinator_address=HOST:PORT
--num_processes=N --process_id=I (as train.py); only process 0 writes.
"""

import functools
import importlib.util
import json
import pathlib
import re

from absl import flags

flags.DEFINE_string("workdir", None, "Training workdir or converted model directory.")
flags.DEFINE_multi_string("reduction", [], "METHOD[:SCHEDULE][:window=W][:merge=M]; repeatable.")
flags.DEFINE_string("sweep", None, "Sweep file (configs/sweeps/*.py) whose get_config() lists reductions.")
flags.DEFINE_string("data", None, "Data source (default: the training config's); e.g. tfds:imagenet2012.")
flags.DEFINE_string("data_dir", None, "Data directory (IDX files, TFDS data_dir).")
flags.DEFINE_string("split", None, "Split to evaluate (default: the training config's eval split, or 'test').")
flags.DEFINE_float(
    "crop_pct", None, "Centre-crop fraction (default: the training config's; 0.875 for a converted model without one)."
)
flags.DEFINE_integer(
    "batch_size",
    None,
    "Global evaluation batch size, also the images/s batch (default: "
    "250 rounded up to a multiple of the data-parallel size and the number of processes).",
)
flags.DEFINE_enum("weights", "all", ["all", "params", "ema"], "Which weights to evaluate.")
flags.DEFINE_string(
    "mesh",
    None,
    "Device mesh for accuracy, AXIS:SIZE[,AXIS:SIZE] over data, fsdp, tensor "
    "(unnamed axes 1; one size may be -1, the rest), e.g. data:-1 or data:2,fsdp:4. Default: "
    "the training run's config.mesh (workdir config.json), else data:-1.",
)
flags.DEFINE_string("coordinator_address", None, "Multi-host: HOST:PORT of process 0's coordinator.")
flags.DEFINE_integer("num_processes", None, "Multi-host: number of processes.")
flags.DEFINE_integer("process_id", None, "Multi-host: this process's index in [0, num_processes).")
flags.mark_flags_as_required(["workdir"])
FLAGS = flags.FLAGS


def load_sweep(path: str) -> list[str]:
    spec = importlib.util.spec_from_file_location("sweep_config", path)
    if spec is None or not pathlib.Path(path).is_file():
        raise ValueError(f"--sweep: no such file {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return list(module.get_config().reductions)


def parse_mesh(text: str) -> dict:
    """'data:2,fsdp:4' -> {"data": 2, "fsdp": 4, "tensor": 1}."""
    from sarf_jax import parallel

    sizes = dict.fromkeys(parallel.MESH_AXES, 1)
    for item in text.split(","):
        axis, _, size = item.partition(":")
        axis = axis.strip()
        if axis not in sizes or not re.fullmatch(r"-?\d+", size.strip()):
            raise ValueError(
                f"--mesh={text!r}: expected AXIS:SIZE[,AXIS:SIZE] with AXIS one of "
                f"{', '.join(parallel.MESH_AXES)} and SIZE an int (-1: the rest), e.g. data:-1"
            )
        sizes[axis] = int(size)
    return sizes


def make_mesh(workdir: pathlib.Path):
    """--mesh, else the training run's config.mesh, else all devices on the data axis."""
    from sarf_jax import parallel
    from sarf_jax.checkpoints import CONFIG_FILE

    stored = workdir / CONFIG_FILE
    if FLAGS.mesh:
        sizes, origin = parse_mesh(FLAGS.mesh), f"--mesh={FLAGS.mesh}"
    elif stored.is_file() and "mesh" in json.loads(stored.read_text()):
        sizes, origin = json.loads(stored.read_text())["mesh"], f"the training config's mesh ({stored})"
    else:
        sizes, origin = {"data": -1}, "the default mesh data:-1"
    try:
        return parallel.make_mesh(sizes)
    except ValueError as error:
        raise ValueError(
            f"{origin} does not fit this machine: {error}; choose one with --mesh, e.g. --mesh=data:-1"
        ) from None


def batch_size(mesh) -> int:
    """--batch_size, or by default 250 rounded up to a multiple that the mesh and processes split."""
    from sarf_jax.evaluate import sharded

    if FLAGS.batch_size is not None:
        return FLAGS.batch_size
    multiple = sharded.batch_multiple(mesh)
    return -(-250 // multiple) * multiple


def data_config(workdir: pathlib.Path, img_size: int):
    """The training run's data config (config.json), with command-line overrides.

    A converted model has no config.json: its images are `img_size` pixels, cropped as the
    official ImageNet evaluations do (shorter side to img_size / 0.875, centre crop).
    """
    import ml_collections

    from sarf_jax.checkpoints import CONFIG_FILE
    from sarf_jax.data.config import default_data_config

    stored = workdir / CONFIG_FILE
    if stored.is_file():
        data = ml_collections.ConfigDict(json.loads(stored.read_text())).data
    else:
        data = default_data_config()
        data.image_size, data.eval_crop_pct = img_size, 0.875
    if FLAGS.data:
        data.name = FLAGS.data
    if FLAGS.data_dir:
        data.dir = FLAGS.data_dir
    if FLAGS.crop_pct is not None:
        if not 0 < FLAGS.crop_pct <= 1:
            raise ValueError(f"--crop_pct must be in (0, 1], got {FLAGS.crop_pct}")
        data.eval_crop_pct = FLAGS.crop_pct
    return data


def load_models(workdir: pathlib.Path):
    """({"raw": model, "ema": model}, model.json) as --weights asks; "all" skips EMA where there is none."""
    from sarf_jax.models.pretrained import load_pretrained

    models, info = {}, None
    for name in ["params", "ema"] if FLAGS.weights == "all" else [FLAGS.weights]:
        try:
            models["raw" if name == "params" else "ema"], info = load_pretrained(workdir, weights=name, with_info=True)
        except ValueError as error:
            if FLAGS.weights != "all" or name == "params" or "without EMA" not in str(error):
                raise
    return models, info


def main(argv):
    import jax
    import numpy as np

    from sarf_jax import data as data_lib
    from sarf_jax import parallel, reduction
    from sarf_jax.evaluate import report, sharded, sweep

    workdir = pathlib.Path(FLAGS.workdir)
    parallel.initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    mesh = make_mesh(workdir)
    global_batch = batch_size(mesh)
    sharded.check_batch_size(mesh, global_batch, "--batch_size")
    texts = (load_sweep(FLAGS.sweep) if FLAGS.sweep else []) + FLAGS.reduction
    specs = list(dict.fromkeys(map(reduction.parse_spec, texts or ["none"])))
    if None not in specs:
        specs.insert(0, None)  # the dense model is always the reference point
    models, info = load_models(workdir)
    data = data_config(workdir, info["img_size"])
    split = FLAGS.split or data.get("eval_split", "test")
    source = data_lib.make_source(data, split)
    channels = np.shape(source[0]["image"])[-1]
    preprocess = functools.partial(data_lib.normalize, mean=source.mean, std=source.std)  # as training did
    batches = lambda: data_lib.eval_iterator(
        source,
        data,
        global_batch_size=global_batch,
        channels=channels,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    sweep.run_sweep(
        models,
        specs,
        batches,
        workdir=workdir,
        img_size=info["img_size"],
        in_chans=info["in_chans"],
        batch_size=global_batch,
        mesh=mesh,
        preprocess=preprocess,
        progress=True,
    )
    paths = report.write_reports(workdir) if jax.process_index() == 0 else []
    if jax.process_index() == 0:
        print((workdir / "results.md").read_text())
        print("wrote " + ", ".join(str(p) for p in [workdir / "results.json", *paths]))


if __name__ == "__main__":
    from sarf_jax import cli

    cli.run(main, "eval.py")

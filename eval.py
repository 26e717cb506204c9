r"""Evaluate a model under token-reduction settings: accuracy, GFLOPs and images/s, table and plot.

    python eval.py --workdir DIR [--reduction none --reduction sarf_tome:keep=0.6 ...]
    python eval.py --workdir DIR --sweep configs/sweeps/<name>.py

DIR is a training workdir (train.py) or a converted official checkpoint (python -m
sarf_jax.convert); for the latter name the data with --data (e.g. tfds:imagenet2012 --data_dir).
Both the raw and the EMA weights are evaluated when the workdir has both. Results go to
DIR/results.json (written entry by entry; a rerun skips finished entries), results.csv,
results.md and accuracy_vs_gflops.png.
"""

import functools
import importlib.util
import json
import pathlib
import sys

from absl import app, flags, logging

flags.DEFINE_string("workdir", None, "Training workdir or converted model directory.")
flags.DEFINE_multi_string("reduction", [], "METHOD[:SCHEDULE][:window=W][:merge=M]; repeatable.")
flags.DEFINE_string("sweep", None, "Sweep file (configs/sweeps/*.py) whose get_config() lists reductions.")
flags.DEFINE_string("data", None, "Data source (default: the training config's); e.g. tfds:imagenet2012.")
flags.DEFINE_string("data_dir", None, "Data directory (IDX files, TFDS data_dir).")
flags.DEFINE_string("split", None, "Split to evaluate (default: the training config's eval split, or 'test').")
flags.DEFINE_float("crop_pct", None, "Centre-crop fraction (default: the training config's; 0.875 for a "
                   "converted model without one).")
flags.DEFINE_integer("batch_size", 250, "Evaluation batch size (also used for images/s).")
flags.DEFINE_enum("weights", "all", ["all", "params", "ema"], "Which weights to evaluate.")
flags.mark_flags_as_required(["workdir"])
FLAGS = flags.FLAGS


def load_sweep(path: str) -> list[str]:
    spec = importlib.util.spec_from_file_location("sweep_config", path)
    if spec is None or not pathlib.Path(path).is_file():
        raise ValueError(f"--sweep: no such file {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return list(module.get_config().reductions)


def data_config(workdir: pathlib.Path, img_size: int):
    """The training run's data config (config.json), with command-line overrides.

    A converted model has no config.json: its images are `img_size` pixels, cropped as the
    official ImageNet evaluations do (shorter side to img_size / 0.875, centre crop).
    """
    import ml_collections

    from configs.default import get_config

    stored = workdir / "config.json"
    if stored.is_file():
        data = ml_collections.ConfigDict(json.loads(stored.read_text())).data
    else:
        data = get_config().data
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


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)
    import numpy as np

    from sarf_jax import data as data_lib
    from sarf_jax import reduction
    from sarf_jax.evaluate import report, sweep
    from sarf_jax.models.pretrained import load_pretrained
    from sarf_jax.train.step import normalize

    workdir = pathlib.Path(FLAGS.workdir)
    try:
        texts = (load_sweep(FLAGS.sweep) if FLAGS.sweep else []) + FLAGS.reduction
        specs = list(dict.fromkeys(map(reduction.parse_spec, texts or ["none"])))
        if None not in specs:
            specs.insert(0, None)  # the dense model is always the reference point
        weights = ["params", "ema"] if FLAGS.weights == "all" else [FLAGS.weights]
        models = {}
        for name in weights:
            try:
                models["raw" if name == "params" else "ema"], info = load_pretrained(workdir, weights=name, with_info=True)
            except ValueError as error:
                if FLAGS.weights != "all" or name == "params" or "without EMA" not in str(error):
                    raise
        data = data_config(workdir, info["img_size"])
        split = FLAGS.split or data.get("eval_split", "test")
        source = data_lib.make_source(data, split)
        channels = np.shape(source[0]["image"])[-1]
        preprocess = functools.partial(normalize, mean=source.mean, std=source.std)  # as training did
        batches = lambda: data_lib.eval_iterator(source, data, global_batch_size=FLAGS.batch_size, channels=channels)
        sweep.run_sweep(models, specs, batches, workdir=workdir, img_size=info["img_size"],
                        in_chans=info["in_chans"], batch_size=FLAGS.batch_size, preprocess=preprocess,
                        progress=True)
        paths = report.write_reports(workdir)
    except ValueError as error:
        print(f"eval.py: error: {error}", file=sys.stderr)
        sys.exit(1)
    print((workdir / "results.md").read_text())
    print("wrote " + ", ".join(str(p) for p in [workdir / "results.json", *paths]))


if __name__ == "__main__":
    app.run(main)

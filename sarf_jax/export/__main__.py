r"""Export a model for serving: python -m sarf_jax.export --workdir DIR --out F [flags]

    python -m sarf_jax.export --workdir runs/vmamba --reduction sarf_tome:keep=0.6 --out vmamba.jax
    python -m sarf_jax.export --workdir ckpt/vim_small --batch 8 --mean 0.485,0.456,0.406 \
        --std 0.229,0.224,0.225 --out vim_small_b8.jax

DIR is a training workdir (train.py) or a model directory (python -m sarf_jax.convert). F is a
`jax.export` artifact for CPU, CUDA and TPU; F.json beside it says what it takes. With the
training run's mean/std (DIR/config.json's data source, or --mean/--std) the artifact takes
[0, 255] pixels and normalises them itself; otherwise it takes the model's raw input. Load it
with `sarf_jax.export.load(F)`. Errors: one line on stderr, exit status 2, nothing written.
"""

from __future__ import annotations

from absl import flags

from sarf_jax import cli
from sarf_jax.export.directory import export_directory

DYNAMIC = "dynamic"
FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_string("workdir", None, "Training workdir (train.py) or model directory (sarf_jax.convert).")
    flags.DEFINE_string("out", None, "Artifact file to write (replaced atomically); its metadata goes to OUT.json.")
    flags.DEFINE_string(
        "reduction",
        "none",
        "Reduction built into the artifact: METHOD[:SCHEDULE][:window=W][:merge=M], e.g. sarf_tome:keep=0.6.",
    )
    flags.DEFINE_string("batch", DYNAMIC, f"Batch size: a positive integer, or '{DYNAMIC}' (symbolic: any size).")
    flags.DEFINE_enum("weights", "params", ["params", "ema"], "Which weights of a training workdir to export.")
    flags.DEFINE_list(
        "mean",
        None,
        "Per-channel mean in [0, 1] units to normalise with (default: the "
        "training run's, from DIR/config.json's data source).",
    )
    flags.DEFINE_list("std", None, "Per-channel std in [0, 1] units (goes with --mean).")
    flags.DEFINE_bool("raw_input", False, "Export the model's raw (already normalised) input: no normalisation.")
    flags.mark_flags_as_required(["workdir", "out"])


def parse_batch(text: str) -> int | None:
    """'dynamic' -> None (symbolic); a positive integer -> that int."""
    if text == DYNAMIC:
        return None
    try:
        batch = int(text)
    except ValueError:
        batch = 0
    if batch < 1:
        raise ValueError(f"--batch must be a positive integer or '{DYNAMIC}', got {text!r}")
    return batch


def parse_floats(name: str, values: list[str] | None) -> list[float] | None:
    if values is None:
        return None
    try:
        return [float(value) for value in values]
    except ValueError:
        raise ValueError(f"--{name} must be comma-separated numbers, got {','.join(values)!r}") from None


def main(argv) -> int:
    metadata = export_directory(
        FLAGS.workdir,
        FLAGS.out,
        reduction=FLAGS.reduction,
        batch=parse_batch(FLAGS.batch),
        weights=FLAGS.weights,
        mean=parse_floats("mean", FLAGS.mean),
        std=parse_floats("std", FLAGS.std),
        raw_input=FLAGS.raw_input,
    )
    takes = (
        "[0, 255] pixels, normalised inside with mean {mean} and std {std}".format(**metadata)
        if metadata["mean"]
        else "the model's raw input, already normalised"
    )
    size = metadata["img_size"]
    print(
        f"wrote {FLAGS.out} and {FLAGS.out}.json: {metadata['model']} under {metadata['reduction']} for "
        f"{', '.join(metadata['platforms'])}; input {metadata['batch'] or 'b'}x{size}x{size}x{metadata['in_chans']} "
        f"float32: {takes}"
    )
    return 0


if __name__ == "__main__":
    define_flags()
    cli.run(main, "sarf_jax.export")

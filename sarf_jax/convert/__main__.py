"""Convert an official PyTorch checkpoint into a sarf_jax model directory.

    python -m sarf_jax.convert --model vmamba_tiny --torch_checkpoint vssm1_tiny_0230s.pth --out DIR [--ema]

The family's key mapping is applied to every tensor (none may be left over or missing); the head
size is read from the checkpoint; the source file and its SHA-256 are recorded in DIR/model.json.
`--override key=value` (repeatable) changes the registered variant (e.g. depth=4) for
non-standard sizes, with `--img_size` and `--in_chans`. Errors: one line on stderr, exit status 2.
Loading never executes code from the checkpoint (see torch_checkpoint.py). Needs torch.
"""

from __future__ import annotations

import hashlib
import json
import pathlib

from absl import flags
from flax import nnx

from sarf_jax import cli, models
from sarf_jax.convert.official import FAMILIES, head_classes
from sarf_jax.convert.state_dict import load_state_dict
from sarf_jax.convert.torch_checkpoint import read_checkpoint, select_state_dict
from sarf_jax.models.pretrained import save_pretrained


def family_of(model_name: str) -> str:
    family = model_name.split("_")[0]
    if family not in FAMILIES:
        raise ValueError(f"--model {model_name!r}: conversion supports the families {sorted(FAMILIES)}")
    return family


def sha256(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def parse_override(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ValueError(f"--override must look like key=value, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def convert(
    model_name: str,
    checkpoint_path,
    out,
    *,
    ema: bool = False,
    img_size: int = 224,
    in_chans: int = 3,
    overrides: dict | None = None,
) -> dict:
    """Convert and write; returns the model.json contents. Nothing is written on failure."""
    if model_name not in models.list_models():
        raise ValueError(f"--model: unknown model {model_name!r}; valid names: {', '.join(models.list_models())}")
    family = family_of(model_name)
    adapter = FAMILIES[family]
    checkpoint_path = pathlib.Path(checkpoint_path)
    if not checkpoint_path.is_file():
        raise ValueError(f"--torch_checkpoint: no such file {checkpoint_path}")
    if pathlib.Path(out).exists():
        raise ValueError(f"--out: {out} already exists; choose a new directory")
    state_dict = select_state_dict(read_checkpoint(str(checkpoint_path)), ema=ema, source=str(checkpoint_path))
    num_classes = head_classes(family, state_dict)
    if num_classes is None:
        raise ValueError(f"{checkpoint_path}: no classifier head ({adapter.HEAD_WEIGHT} after renaming)")
    overrides = dict(overrides or {})
    model = models.create(
        model_name, num_classes=num_classes, img_size=img_size, in_chans=in_chans, rngs=nnx.Rngs(0), **overrides
    )
    load_state_dict(model, state_dict, rename=adapter.rename, what=str(checkpoint_path))
    source = {
        "file": str(checkpoint_path.absolute()),
        "sha256": sha256(checkpoint_path),
        "weights": "model_ema" if ema else "model",
    }
    save_pretrained(
        out,
        model,
        name=model_name,
        num_classes=num_classes,
        img_size=img_size,
        in_chans=in_chans,
        overrides=overrides,
        source=source,
    )
    return {"name": model_name, "num_classes": num_classes, "img_size": img_size, "source": source}


FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_string("model", None, f"Registered model name, one of: {', '.join(models.list_models())}.")
    flags.DEFINE_string("torch_checkpoint", None, "The official PyTorch checkpoint (.pth) to convert.")
    flags.DEFINE_string("out", None, "New directory to write (must not exist).")
    flags.DEFINE_bool("ema", False, "Convert the EMA weights (model_ema) instead of the trained ones.")
    flags.DEFINE_integer("img_size", 224, "Image side the model is built for.", lower_bound=1)
    flags.DEFINE_integer("in_chans", 3, "Input channels.", lower_bound=1)
    flags.DEFINE_multi_string(
        "override",
        [],
        "KEY=VALUE: change an argument of the registered variant (repeatable; VALUE is JSON, else a string).",
    )
    flags.mark_flags_as_required(["model", "torch_checkpoint", "out"])


def main(argv) -> int:
    info = convert(
        FLAGS.model,
        FLAGS.torch_checkpoint,
        FLAGS.out,
        ema=FLAGS.ema,
        img_size=FLAGS.img_size,
        in_chans=FLAGS.in_chans,
        overrides=dict(map(parse_override, FLAGS.override)),
    )
    print(
        f"wrote {FLAGS.out}: {info['name']} ({info['num_classes']} classes, {info['img_size']} px) "
        f"from {info['source']['weights']} of {FLAGS.torch_checkpoint} (sha256 {info['source']['sha256'][:12]}...)"
    )
    return 0


if __name__ == "__main__":
    define_flags()
    cli.run(main, "sarf_jax.convert")

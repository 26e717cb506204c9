"""An artifact on disk: F (jax.export's serialized StableHLO) and F.json (what it is and takes).

Both are written to temporary siblings first and renamed into place, so a failure leaves the old
pair (or nothing). F.json records F's SHA-256: `load` refuses a pair that does not belong together.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import tempfile

import jax
import jax.numpy as jnp
from jax import export as jax_export

PIXELS = "pixels"  # float32 (or uint8) in [0, 255], normalised inside the artifact
NORMALIZED = "normalized"  # float32, already normalised as the model was trained


def sidecar(path) -> pathlib.Path:
    """F + ".json"."""
    return pathlib.Path(f"{path}.json")


def save(path, exported: jax_export.Exported, metadata: dict) -> dict:
    """Write `exported` to `path` and `metadata` (plus the file's sha256) to path.json; returns it."""
    path = pathlib.Path(path)
    data = bytes(exported.serialize())
    metadata = {**metadata, "sha256": hashlib.sha256(data).hexdigest()}
    path.parent.mkdir(parents=True, exist_ok=True)
    staged = []
    try:
        staged.append(_stage(path, data))
        staged.append(_stage(sidecar(path), (json.dumps(metadata, indent=2) + "\n").encode()))
        for temporary, final in zip(staged, (path, sidecar(path))):
            os.replace(temporary, final)
    finally:
        for temporary in staged:
            temporary.unlink(missing_ok=True)
    return metadata


def check_destination(path) -> None:
    """A file path whose directory exists or can be made (checked before any work is done)."""
    path = pathlib.Path(path)
    if path.is_dir() or sidecar(path).is_dir():
        raise ValueError(f"out: {path} is a directory; give a file name such as {path / 'model.jax'}")
    parent = next((p for p in path.absolute().parents if p.exists()), None)
    if parent is None or not parent.is_dir():
        raise ValueError(f"out: cannot create {path}: {parent} is not a directory")


def _stage(path: pathlib.Path, data: bytes) -> pathlib.Path:
    """`data` in a new temporary file beside `path`, flushed to disk."""
    descriptor, name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(descriptor, 0o666 & ~_umask())  # mkstemp's 0600 would hide the artifact from a server's user
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
    except BaseException:
        os.unlink(name)
        raise
    return pathlib.Path(name)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class ServingModel:
    """A loaded artifact: `model(images) -> logits` (float32, (batch, num_classes)).

    images: NHWC of the exported size; [0, 255] pixels (float or uint8) when
    `metadata["input"] == "pixels"`, else float images normalised as in training.
    """

    def __init__(self, exported: jax_export.Exported, metadata: dict):
        self.exported, self.metadata = exported, metadata
        self._call = jax.jit(exported.call)

    def __call__(self, images) -> jax.Array:
        images = jnp.asarray(images)
        meta = self.metadata
        size, channels = meta["img_size"], meta["in_chans"]
        if images.ndim != 4 or images.shape[1:] != (size, size, channels) or meta["batch"] not in (None, len(images)):
            raise ValueError(
                f"images must have shape ({meta['batch'] or 'batch'}, {size}, {size}, {channels}) "
                f"(NHWC), got {images.shape}"
            )
        if not jnp.issubdtype(images.dtype, jnp.floating) and meta["input"] != PIXELS:
            raise ValueError(
                f"images: this artifact takes normalised float images, got {images.dtype} "
                "(it was exported without normalisation)"
            )
        return self._call(images.astype(jnp.float32))


def load(path) -> ServingModel:
    """The artifact at `path` (with its path.json), ready to call on this host's default device."""
    path = pathlib.Path(path)
    for file in (path, sidecar(path)):
        if not file.is_file():
            raise ValueError(f"load: no such file {file} (written by python -m sarf_jax.export)")
    data = path.read_bytes()
    metadata = json.loads(sidecar(path).read_text())
    if hashlib.sha256(data).hexdigest() != metadata.get("sha256"):
        raise ValueError(f"load: {sidecar(path)} does not describe {path} (sha256 differs); export again")
    return ServingModel(jax_export.deserialize(bytearray(data)), metadata)

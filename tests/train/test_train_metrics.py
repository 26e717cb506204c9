"""MetricWriter: metrics.jsonl rows and TensorBoard scalars, written without importing torch."""

import json
import struct
import subprocess
import sys
import textwrap


def test_writer_writes_jsonl_and_tensorboard_scalars_without_importing_torch(tmp_path):
    """tensorboardX imports torch when it can, for torch tensors only; here torch is installed (the
    parity tests use it), and importing it would add seconds to every training run."""
    script = textwrap.dedent(
        f"""
        import sys
        from sarf_jax.train.metrics import MetricWriter
        writer = MetricWriter({str(tmp_path)!r})
        writer.write(3, "train", {{"loss": 1.5, "lr": float("nan")}})
        writer.close()
        assert "torch" not in sys.modules  # neither imported nor left marked as missing
        import importlib.util
        print(importlib.util.find_spec("torch") is not None)  # while installed
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "True"
    row = json.loads((tmp_path / "metrics.jsonl").read_text())
    assert row["step"] == 3 and row["loss"] == 1.5
    scalars = [
        (event.step, value.tag, value.simple_value)
        for event in read_events(*(tmp_path / "tensorboard").glob("events.out.tfevents.*"))
        for value in event.summary.value
    ]
    assert scalars == [(3, "train/loss", 1.5)]  # NaN is left out of TensorBoard


def read_events(path):
    """The Event protos of a TensorBoard event file (TFRecord framing: length, its CRC, data, CRC)."""
    from tensorboardX.proto.event_pb2 import Event

    data, events, offset = path.read_bytes(), [], 0
    while offset < len(data):
        length = struct.unpack("<Q", data[offset : offset + 8])[0]
        events.append(Event.FromString(data[offset + 12 : offset + 12 + length]))
        offset += 12 + length + 4
    return events

"""What the benchmarks record about the machine, and the allocator `make` runs them on."""

import os
import pathlib
import subprocess
import sys

from sarf_jax.analysis import allocator, machine_info

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_allocator_names_a_preloaded_malloc_or_the_system_one(monkeypatch):
    monkeypatch.setenv("LD_PRELOAD", "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4")
    assert allocator() == "tcmalloc"
    monkeypatch.setenv("LD_PRELOAD", "/opt/lib/libjemalloc.so.2 /opt/lib/other.so")
    assert allocator() == "jemalloc"
    monkeypatch.delenv("LD_PRELOAD")
    assert allocator() == "system"
    info = machine_info()
    assert set(info) == {"cpu", "cores", "jax", "device", "allocator", "compiler_options", "xla_flags", "date"}
    assert info["allocator"] == "system" and info["cores"] >= 1


def test_find_tcmalloc_prints_a_library_that_preloads_or_nothing():
    # --find-only: a test never installs packages (`make test` has run the installing form already)
    script = ["sh", "tools/find_tcmalloc.sh", "--find-only"]
    found = subprocess.run(script, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert found.returncode == 0, found.stderr
    path = found.stdout.strip()
    if not path:  # no tcmalloc here: the script says what to install
        assert "libtcmalloc-minimal4" in found.stderr
        return
    assert pathlib.Path(path).name == "libtcmalloc_minimal.so.4" and pathlib.Path(path).is_file()
    probe = "import sarf_jax.analysis as a; print(a.allocator(), 'libtcmalloc' in open('/proc/self/maps').read())"
    env = dict(os.environ, LD_PRELOAD=path, JAX_PLATFORMS="cpu")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, env=env)
    assert loaded.stdout.split() == ["tcmalloc", "True"], loaded.stderr[-2000:]

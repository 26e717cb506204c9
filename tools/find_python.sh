#!/bin/sh
# Print the path of a Python interpreter >= 3.12 (jax >= 0.11 needs it), or explain what to install.
# Looks at $PYTHON, then python3.13/python3.12/python3 on PATH, then every pyenv-installed version
# in version order (pyenv shims refuse versions that are not selected, so those are called directly).
ok() { "$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)' >/dev/null 2>&1; }

for candidate in "${PYTHON:-}" python3.13 python3.12 python3 python; do
  [ -n "$candidate" ] || continue
  path=$(command -v "$candidate" 2>/dev/null) || continue
  if ok "$path"; then echo "$path"; exit 0; fi
done

pyenv_root=$(pyenv root 2>/dev/null || echo "${PYENV_ROOT:-$HOME/.pyenv}")
for path in "$pyenv_root"/versions/3.*/bin/python3; do
  if ok "$path"; then echo "$path"; exit 0; fi
done

cat >&2 <<'MSG'
error: no Python >= 3.12 found (jax >= 0.11 requires it).
Install one, then run make again, for example:
  Debian/Ubuntu:  apt-get install -y python3.12 python3.12-venv
  pyenv:          pyenv install 3.12
or point to one explicitly:  make test PYTHON=/path/to/python3.12
MSG
exit 1

#!/bin/sh
# Make sure Fashion-MNIST's IDX files are available for `make train` (configs/default.py reads
# /usr/share/datasets/fashion-mnist, Debian's dataset-fashion-mnist package, or FMNIST_DIR).
dir=${FMNIST_DIR:-/usr/share/datasets/fashion-mnist}
have() { [ -e "$dir/train-images-idx3-ubyte.gz" ] || [ -e "$dir/train-images-idx3-ubyte" ]; }
have && exit 0
if [ "$dir" = /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then sudo=""; elif command -v sudo >/dev/null 2>&1; then sudo="sudo"; else sudo=none; fi
  if [ "$sudo" != none ]; then
    echo "installing Debian's dataset-fashion-mnist (Fashion-MNIST IDX files, 30 MB)"
    $sudo apt-get install -y dataset-fashion-mnist >/dev/null 2>&1 ||
      { $sudo apt-get update >/dev/null 2>&1 && $sudo apt-get install -y dataset-fashion-mnist >/dev/null; }
    have && exit 0
  fi
fi
cat >&2 <<MSG
error: Fashion-MNIST not found in $dir.
Get it in one of these ways, then run make train again:
  Debian/Ubuntu (as root):  apt-get install -y dataset-fashion-mnist
  any system:  download train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz,
               t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz from
               https://github.com/zalandoresearch/fashion-mnist (data/fashion) into a folder DIR and run
               make train FMNIST_DIR=DIR
MSG
exit 1

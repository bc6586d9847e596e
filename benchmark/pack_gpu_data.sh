#!/usr/bin/env bash
# Packs the data the GPU machine needs into gpu-data/: only the checkout
# travels there, not ../shared. MNIST's and Fashion-MNIST's four raw files
# gzipped (about 10 and 30 MB), the CIFAR-10 JPEG folder as one tar.gz
# (about 20 MB). gpu-data/ is git-ignored through .git/info/exclude; name it in
# the device call's `carry` (64 MiB at most, so pack only what the window's
# WORK reads).
#   bash benchmark/pack_gpu_data.sh [DATA_ROOT (../shared/data)] [DEST (gpu-data)] [WHAT (mnist,cifar10)]
# WHAT: comma-separated, from mnist, fashion-mnist, cifar10, and torchattacks (its wheel, for the
# robustness step of WORK=mnist-every-rule: the GPU machine's image lacks it and has no registry).
set -euo pipefail
src=${1:-../shared/data}
dest=${2:-gpu-data}
what=${3:-mnist,cifar10}
raw() {  # $1: torchvision folder name
  mkdir -p "$dest/$1/raw"
  for f in "$src/$1"/raw/*-ubyte; do
    gzip -c "$f" > "$dest/$1/raw/$(basename "$f").gz"
  done
}
for item in ${what//,/ }; do
  case "$item" in
    mnist) raw MNIST ;;
    fashion-mnist) raw FashionMNIST ;;
    cifar10) tar -C "$src" -czf "$dest/cifar10-jpeg.tar.gz" CIFAR10-JPEG ;;
    torchattacks)  # pure Python: one wheel serves the machine's Python 3.12
      version=$(python3 -c "import importlib.metadata as m; print(m.version('torchattacks'))")
      python3 -m pip download -q --no-deps --only-binary=:all: -d "$dest/wheels" "torchattacks==$version" ;;
    *) echo "pack_gpu_data.sh: unknown item '$item' (allowed: mnist, fashion-mnist, cifar10, torchattacks)" >&2
       exit 2 ;;
  esac
done
exclude="$(git rev-parse --git-common-dir 2>/dev/null || echo .git)/info/exclude"
if [ -d "$(dirname "$exclude")" ] && ! grep -qx "/$dest/" "$exclude" 2>/dev/null; then
  echo "/$dest/" >> "$exclude"
fi
du -sh "$dest"

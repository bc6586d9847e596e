#!/usr/bin/env bash
# Packs the data the GPU machine needs into gpu-data/ (about 31 MB): only the
# checkout travels there, not ../shared. MNIST's four raw files gzipped, and
# the CIFAR-10 JPEG folder as one tar.gz. gpu-data/ is git-ignored through
# .git/info/exclude; name it in the device call's `carry`.
#   bash benchmark/pack_gpu_data.sh [DATA_ROOT (default ../shared/data)] [DEST (default gpu-data)]
set -euo pipefail
src=${1:-../shared/data}
dest=${2:-gpu-data}
mkdir -p "$dest/MNIST/raw"
for f in "$src"/MNIST/raw/*-ubyte; do
  gzip -c "$f" > "$dest/MNIST/raw/$(basename "$f").gz"
done
tar -C "$src" -czf "$dest/cifar10-jpeg.tar.gz" CIFAR10-JPEG
exclude="$(git rev-parse --git-common-dir 2>/dev/null || echo .git)/info/exclude"
if [ -d "$(dirname "$exclude")" ] && ! grep -qx "/$dest/" "$exclude" 2>/dev/null; then
  echo "/$dest/" >> "$exclude"
fi
du -sh "$dest"

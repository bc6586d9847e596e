#!/usr/bin/env bash
# One GPU window in one call, from the repository root: the CUDA tests, the
# bench, then the CIFAR-10 grid (FC, LC, conv x BP, FA, DFA) until the
# deadline. Everything lands under $OUT_DIR (the device tool's $OUT): at most
# 8 files come back from there, so the run records travel as one tar.gz
# (checkpoints of CIFAR-10 nets are far over the 16 MiB a file may be, so a
# cell unfinished at the deadline comes back as its partial record).
#
#   bash benchmark/pack_gpu_data.sh             # here, once: gpu-data/, ~31 MB
#   bash benchmark/gpu_window.sh                # there (device run, carry gpu-data)
#   DEVICE=cpu QUICK=1 bash benchmark/gpu_window.sh   # rehearsal on a CPU
set -uo pipefail
DEVICE=${DEVICE:-cuda}
PACK=${DATA_PACK:-gpu-data}
OUT_DIR=${OUT_DIR:-${OUT:-gpu-window-out}}
DEADLINE=${DEADLINE:-6m}  # the grid's share of a 10-minute call
EPOCHS=${EPOCHS:-100}
ARCHS=${ARCHS:-fc,lc,conv}
RULES=${RULES:-bp,fa,dfa}
RUNS=${RUNS:-results/cifar10-gpu-window}  # stays on the machine; its records come back
PY=${PYTHON:-python3}
GRID_EXTRA=()
BENCH_EXTRA=()
if [ "${QUICK:-0}" = 1 ]; then  # rehearsal: tiny sizes, same steps
  GRID_EXTRA=(--train-subset 200 --batch-size 50)
  BENCH_EXTRA=(--quick --section rules)
fi
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
OUT_DIR=$(mkdir -p "$OUT_DIR" && cd "$OUT_DIR" && pwd)
data=$(mktemp -d)
export BIOBENCH_DATA="$data" BIOBENCH_CACHE="$data/.cache"
status=0

echo "== unpacking $PACK"
mkdir -p "$data/MNIST/raw"
for f in "$PACK"/MNIST/raw/*.gz; do gunzip -c "$f" > "$data/MNIST/raw/$(basename "$f" .gz)"; done
tar -C "$data" -xzf "$PACK/cifar10-jpeg.tar.gz" || status=1

echo "== CUDA tests"
"$PY" -m pytest -q -p no:cacheprovider -m cuda tests > "$OUT_DIR/cuda-tests.txt" 2>&1
rc=$?; tail -3 "$OUT_DIR/cuda-tests.txt"
[ $rc -eq 0 ] || [ $rc -eq 5 ] || status=1

echo "== bench on $DEVICE"
"$PY" cli.py bench --device "$DEVICE" "${BENCH_EXTRA[@]}" > "$OUT_DIR/bench.md" 2>&1 || status=1
tail -5 "$OUT_DIR/bench.md"

echo "== CIFAR-10 grid until the deadline ($DEADLINE)"
"$PY" cli.py grid --datasets cifar10-jpeg --archs "$ARCHS" --algos "$RULES" --seeds 1 --epochs "$EPOCHS" \
  --val-split 0.1 --device "$DEVICE" --deadline "$DEADLINE" --data-dir "$data" --out "$RUNS" "${GRID_EXTRA[@]}" \
  > "$OUT_DIR/grid.log" 2>&1 || status=1
tail -3 "$OUT_DIR/grid.log"
"$PY" cli.py table --runs "$RUNS" > "$OUT_DIR/table.md" 2>&1 || status=1
(cd "$RUNS" && find . -name record.json | tar -czf "$OUT_DIR/records.tar.gz" -T -) || status=1
echo "== done (status $status); files in $OUT_DIR"
exit $status

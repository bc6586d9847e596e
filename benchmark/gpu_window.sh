#!/usr/bin/env bash
# One GPU window in one call, from the repository root: the CUDA tests, the
# bench, then one WORK's grid until the deadline. Everything lands under
# $OUT_DIR (the device tool's $OUT): at most 8 files come back from there, so
# the run records travel as one tar.gz (checkpoints are far over the 16 MiB a
# file may be, so a cell unfinished at the deadline comes back as its partial
# record, and whatever needs a kept model runs here, in the same window).
#
# WORK (what the grid trains):
#   cifar10           FC, LC, conv x BP, FA, DFA on CIFAR-10 (JPEG), 1 seed, EPOCHS (100)
#   mnist-every-rule  the bartunov-mnist preset (every rule, FC/conv/LC), 3 seeds, EPOCHS (3),
#                     10% validation, then `robustness` on the finished runs (ROBUST_TIME; EP apart,
#                     with 100 images and PGD-20, for ROBUST_EP_TIME)
#   lenet             BioTorch's LeNet protocol on MNIST and Fashion-MNIST, 3 seeds, EPOCHS (100)
#
#   bash benchmark/pack_gpu_data.sh ../shared/data gpu-data mnist,torchattacks   # here (what WORK reads)
#   WORK=mnist-every-rule JOBS=8 bash benchmark/gpu_window.sh      # there (device run, carry gpu-data)
#   DEVICE=cpu QUICK=1 bash benchmark/gpu_window.sh                 # rehearsal on a CPU
set -uo pipefail
WORK=${WORK:-cifar10}
DEVICE=${DEVICE:-cuda}
PACK=${DATA_PACK:-gpu-data}
OUT_DIR=${OUT_DIR:-${OUT:-gpu-window-out}}
DEADLINE=${DEADLINE:-6m}  # the grid's share of a 10-minute call
JOBS=${JOBS:-1}           # cells trained at once (one GPU, several processes: small nets leave it idle)
PY=${PYTHON:-python3}
case "$WORK" in
  cifar10)
    EPOCHS=${EPOCHS:-100}; SEEDS=${SEEDS:-1}; RUNS=${RUNS:-results/cifar10-gpu-window}
    GRID=(--datasets cifar10-jpeg --archs "${ARCHS:-fc,lc,conv}" --algos "${RULES:-bp,fa,dfa}" --val-split 0.1) ;;
  mnist-every-rule)
    EPOCHS=${EPOCHS:-3}; SEEDS=${SEEDS:-3}; RUNS=${RUNS:-results/bartunov-mnist-robust}
    GRID=(--preset bartunov-mnist --val-split 0.1)
    [ -n "${ARCHS:-}" ] && GRID+=(--archs "$ARCHS")
    [ -n "${RULES:-}" ] && GRID+=(--algos "$RULES") ;;
  lenet)
    EPOCHS=${EPOCHS:-100}; SEEDS=${SEEDS:-3}; RUNS=${RUNS:-results/biotorch-lenet-gpu}
    GRID=(--datasets mnist,fashion-mnist --archs lenet --algos "${RULES:-bp,fa,dfa,usf,brsf,frsf,kp}"
          --batch-size 64 --optimizer sgd --momentum 0.9 --l2-penalty 1e-3 --lr 0.001 --lr-schedule multistep
          --lr-milestones 50,75 --val-split 0.16667) ;;
  *) echo "gpu_window.sh: unknown WORK '$WORK' (allowed: cifar10, mnist-every-rule, lenet)" >&2; exit 2 ;;
esac
BENCH_EXTRA=()
if [ "${QUICK:-0}" = 1 ]; then  # rehearsal: tiny sizes, same steps
  GRID+=(--train-subset 200 --batch-size 50)
  BENCH_EXTRA=(--quick --section rules)
fi
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
OUT_DIR=$(mkdir -p "$OUT_DIR" && cd "$OUT_DIR" && pwd)
data=$(mktemp -d)
export BIOBENCH_DATA="$data" BIOBENCH_CACHE="$data/.cache"
status=0

echo "== unpacking $PACK"
for name in MNIST FashionMNIST; do
  [ -d "$PACK/$name/raw" ] || continue
  mkdir -p "$data/$name/raw"
  for f in "$PACK/$name"/raw/*.gz; do gunzip -c "$f" > "$data/$name/raw/$(basename "$f" .gz)"; done
done
if [ -f "$PACK/cifar10-jpeg.tar.gz" ]; then tar -C "$data" -xzf "$PACK/cifar10-jpeg.tar.gz" || status=1; fi
if compgen -G "$PACK/wheels/*.whl" > /dev/null; then  # packages the machine's image lacks
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$data/site" "$PACK"/wheels/*.whl \
    && export PYTHONPATH="$PYTHONPATH:$data/site" || status=1
fi

if [ "${TESTS:-1}" = 1 ]; then
  echo "== CUDA tests"
  "$PY" -m pytest -q -p no:cacheprovider -m cuda tests > "$OUT_DIR/cuda-tests.txt" 2>&1
  rc=$?; tail -3 "$OUT_DIR/cuda-tests.txt"
  [ $rc -eq 0 ] || [ $rc -eq 5 ] || status=1
fi

if [ "${BENCH:-1}" = 1 ]; then
  echo "== bench on $DEVICE"
  "$PY" cli.py bench --device "$DEVICE" "${BENCH_EXTRA[@]}" > "$OUT_DIR/bench.md" 2>&1 || status=1
  tail -5 "$OUT_DIR/bench.md"
fi

echo "== $WORK grid until the deadline ($DEADLINE)"
"$PY" cli.py grid "${GRID[@]}" --seeds "$SEEDS" --epochs "$EPOCHS" --jobs "$JOBS" --device "$DEVICE" \
  --deadline "$DEADLINE" --data-dir "$data" --out "$RUNS" > "$OUT_DIR/grid.log" 2>&1 || status=1
tail -3 "$OUT_DIR/grid.log"
if [ "$WORK" = mnist-every-rule ] && [ "${ROBUST_TIME:-3m}" != 0 ]; then  # 0: records only (timeout 0 never stops)
  # the models stay here, so the evaluation must too; an unfinished run keeps no robustness.json
  # EP relaxes at every attack gradient: it goes last, with the smaller protocol of docs/robustness.md
  echo "== robustness for ${ROBUST_TIME:-3m}, then EP's for ${ROBUST_EP_TIME:-1m}"
  timeout "${ROBUST_TIME:-3m}" "$PY" cli.py robustness --runs "$RUNS" --jobs "$JOBS" --device "$DEVICE" \
    --data-dir "$data" --skip-algos ep ${ROBUST_EXTRA:-} > "$OUT_DIR/robustness.log" 2>&1
  rc=$?; tail -3 "$OUT_DIR/robustness.log"
  [ $rc -eq 0 ] || [ $rc -eq 124 ] || status=1
  if [ "${ROBUST_EP_TIME:-1m}" != 0 ]; then
    timeout "${ROBUST_EP_TIME:-1m}" "$PY" cli.py robustness --runs "$RUNS" --jobs "$JOBS" --device "$DEVICE" \
      --data-dir "$data" --algos ep --test-subset 100 --pgd-steps 20 > "$OUT_DIR/robustness-ep.log" 2>&1
    rc=$?; tail -3 "$OUT_DIR/robustness-ep.log"
    [ $rc -eq 0 ] || [ $rc -eq 124 ] || status=1
  fi
fi
"$PY" cli.py table --runs "$RUNS" > "$OUT_DIR/table.md" 2>&1 || status=1
(cd "$RUNS" && find . \( -name record.json -o -name robustness.json \) | tar -czf "$OUT_DIR/records.tar.gz" -T -) \
  || status=1
echo "== done (status $status); files in $OUT_DIR"
exit $status

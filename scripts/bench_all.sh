#!/usr/bin/env bash
# Every measurement in BENCHMARKS.md and RELIABILITY.md, in order, on the magnetic-tile data with the
# stand-in weights. Outputs go to runs/bench/ (logs, JSON). Hours on a 2-core CPU; each step can be run alone.
#   bash scripts/bench_all.sh [step ...]     steps: build evaluate synth sweep offline coreset serve soak
set -uo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data/magnetic_tile}
W=${WEIGHTS:-../shared/weights/wrn50-random0-bncal.safetensors}
B=runs/bench
PY=.venv/bin/python
X=".venv/bin/exdd"
export EXDD_SERVE_VENV=${EXDD_SERVE_VENV:-$PWD/.venv-serve}
mkdir -p $B
steps=${*:-build evaluate synth sweep offline coreset serve soak}
timed() { local name=$1; shift; echo "== $name: $*" >&2; /usr/bin/time -v "$@" > $B/$name.out 2> $B/$name.err; echo "   exit $? ($(grep -E 'Elapsed|Maximum resident' $B/$name.err | tr -s ' ' | tr '\n' ';'))" >&2; }
for s in $steps; do case $s in
  build) timed build $X offline build $DATA --out $B/banks --weights $W ;;
  evaluate) timed evaluate $X offline evaluate $DATA --banks $B/banks --out $B/evaluate.json ;;
  synth) timed synth $X offline synth $DATA --method paste --per-prompt 75 --out $B/synth-paste ;;
  sweep) timed sweep $X offline sweep $DATA --synthetic $B/synth-paste --counts 0,50,100,150 --out $B/sweep-synth \
           --weights $W --raw-cache runs/cache/magnetic_tile-632x224/train --raw-cache runs/cache/magnetic_tile-632x224/test ;;
  offline) timed offline $PY scripts/bench_offline.py --weights $W ;;
  coreset) timed coreset-subset $PY scripts/bench_coreset.py subset --images 100
           timed coreset-scale $PY scripts/bench_coreset.py scale --n 4600000 ;;
  serve) $X export onnx --banks $B/banks --out $B/features.onnx --parity-images $DATA/test > $B/onnx.out 2>&1
         $X export repository --onnx $B/features.onnx --banks $B/banks --out $B/repository --features-backend python --force > $B/repo.out 2>&1
         $X serve $B/repository --http-port 18100 --grpc-port 18101 --metrics-port 18102 > $B/serve.log 2>&1 &
         SP=$!; until curl -sf localhost:18100/v2/health/ready >/dev/null; do sleep 2; kill -0 $SP || break; done
         timed client-score $X client score $DATA/test --exclude '*_GT.png' --out $B/client-score.jsonl --url 127.0.0.1:18101 --heatmaps $B/heatmaps --restart
         timed client-bench $X client bench --url 127.0.0.1:18101 --batch-sizes 1,4,8 --concurrency 1,2,4 --requests 16 --images $DATA/test --out $B/client-bench.json
         kill -INT $SP; wait $SP
         timed bench-triton $PY scripts/bench_triton.py --dataset $DATA/test --weights $W --repo $B/repository --n 16 ;;
  soak) timed soak $PY scripts/soak.py --repo $B/repository --duration 600 --concurrency 8 --out $B/soak.json ;;
  *) echo "unknown step $s" >&2; exit 2 ;;
esac; done

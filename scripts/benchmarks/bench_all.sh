#!/usr/bin/env bash
# The core measurements, in order, on the magnetic-tile data with the stand-in weights. Outputs go to runs/bench/
# (logs, JSON). Hours on a 2-core CPU; each step can be run alone.
#   bash scripts/benchmarks/bench_all.sh [step ...]   steps: build evaluate synth sweep offline coreset serve soak
# What it reproduces (BENCHMARKS.md section <- step):
#   Detection quality on magnetic tile <- build evaluate;  Synthetic defects <- synth sweep;
#   Coreset <- coreset;  Offline speed <- offline;  Serving through Triton, and the client (client score,
#   client bench, Triton vs the offline scorer) <- serve;  RELIABILITY.md's soak <- soak (needs serve's repository).
# What it does NOT run (each takes its own data, venv or hours; the command is in its BENCHMARKS.md section):
#   the image decision (scripts/studies/study_evidence.py, study_image_score.py), projection dimension d
#   (scripts/studies/sweep_d.py), Distributed (bench_ray.py, bench_ray_scale.py), side by side with anomalib
#   (bench_anomalib.py, a venv with anomalib), bf16 / int8 extractors (bench_precision.py), ANN (bench_ann.py),
#   end to end vs anomalib (bench_speed.py), the GPU check (scripts/gpu_check.sh), bank updates (bench_update.py),
#   many products on one server (bench_products.py).
set -uo pipefail
cd "$(dirname "$0")/../.."
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
  offline) timed offline $PY -m scripts.benchmarks.bench_offline --weights $W ;;
  coreset) timed coreset-subset $PY -m scripts.benchmarks.bench_coreset subset --images 100
           timed coreset-scale $PY -m scripts.benchmarks.bench_coreset scale --n 4600000 ;;
  serve) $X export onnx --banks $B/banks --out $B/features.onnx --parity-images $DATA/test > $B/onnx.out 2>&1
         $X export repository --onnx $B/features.onnx --banks $B/banks --out $B/repository --features-backend python --force > $B/repo.out 2>&1
         $X serve $B/repository --http-port 18100 --grpc-port 18101 --metrics-port 18102 > $B/serve.log 2>&1 &
         SP=$!; until curl -sf localhost:18100/v2/health/ready >/dev/null; do sleep 2; kill -0 $SP || break; done
         timed client-score $X client score $DATA/test --exclude '*_GT.png' --out $B/client-score.jsonl --url 127.0.0.1:18101 --heatmaps $B/heatmaps --restart
         timed client-bench $X client bench --url 127.0.0.1:18101 --batch-sizes 1,4,8 --concurrency 1,2,4 --requests 16 --images $DATA/test --out $B/client-bench.json
         kill -INT $SP; wait $SP
         timed bench-triton $PY -m scripts.benchmarks.bench_triton --dataset $DATA/test --weights $W --repo $B/repository --n 16 ;;
  soak) timed soak $PY -m scripts.tools.soak --repo $B/repository --duration 600 --concurrency 8 --out $B/soak.json ;;
  *) echo "unknown step $s" >&2; exit 2 ;;
esac; done

#!/usr/bin/env bash
# Rule 4 of issue 25 (docs/decision-study.md) on sets kept back from development, from images to verdict:
# raw features once per set, 5 group splits x build seeds 0 and 1 with the served 1 % negative bank and with C's
# 2.5 % one, then C (dual_topk_g2@0.05, map ratio_b) paired with the served dual_b01 and the rule's verdict.
#
#   EXDD_STUDY_DATA=/data/heldback scripts/studies/rule4.sh commutators:632x224 sheet:256x256 spots:224x560
#
# Each NAME is a KSDD2-layout folder under EXDD_STUDY_DATA (default ../shared/data); a mapping.csv with a spot or
# kosNN item column groups the splits, without one every image is its own group. Environment: PY (python),
# OUT (default runs/rule4), CACHE (default runs/cache), WEIGHTS (default: the study's stand-in weights), BOOT (1000).
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: $0 NAME:HxW [NAME:HxW ...]" >&2; exit 2; }
PY=${PY:-.venv/bin/python}
OUT=${OUT:-runs/rule4}
CACHE=${CACHE:-runs/cache}
names=()
for s in "$@"; do
  case "$s" in *:*x*) ;; *) echo "$0: $s: expected NAME:HxW (e.g. commutators:632x224)" >&2; exit 2 ;; esac
  $PY -m scripts.studies.study_cache "$s" --cache "$CACHE" ${WEIGHTS:+--weights "$WEIGHTS"}
  for r in 0.01 0.025; do
    $PY -m scripts.studies.study_splits --set "$s" --splits 0,1,2,3,4 --build-seeds 0,1 --neg-ratio "$r" \
      --cache "$CACHE" --out "$OUT"
  done
  names+=("${s%%:*}")
done
sets=$(IFS=,; echo "${names[*]}")
$PY -m scripts.studies.study_decision "$OUT" --sets "$sets" --variant random-d256-neg0.025 --against random-d256 \
  --rule4 --boot "${BOOT:-1000}" --cache "$CACHE" --json "$OUT/rule4.json"

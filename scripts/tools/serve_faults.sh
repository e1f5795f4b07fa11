#!/bin/bash
# The fault table of RELIABILITY.md ("One bad file, one stray request, one killed command"), measured on a real
# `exdd serve`: bash scripts/tools/serve_faults.sh BANKS ONNX WORKDIR  (BANKS: any bank folder; ONNX: its extractor;
# ports 18100-18102 must be free). Run from the checkout root with its .venv; uses $EXDD_SERVE_VENV.
set -u
B=$(realpath "$1"); O=$(realpath "$2"); W=$(realpath -m "$3")
export EXDD_ADMIN_KEY_FILE=$W/key/admin-key
X=".venv/bin/python -m exdd.cli"
rm -rf "$W"; mkdir -p "$W"
$X export repository --onnx $O --product alpha=$B --product beta=$B --product gamma=$B --out $W/repo --features-backend python >/dev/null
serve() {  # serve REPO LOG -> waits for ready:, prints seconds
  local t0=$(date +%s.%N)
  $X serve $1 --http-port 18100 --grpc-port 18101 --metrics-port 18102 > $2 2>&1 &
  SPID=$!
  while ! grep -q "^ready:\|^error" $2; do sleep 0.1; done
  echo "serve-to-ready: $(echo "$(date +%s.%N) - $t0" | bc) s"
}
stop() { kill -INT $SPID; wait $SPID; sleep 2; }
echo "== healthy three products"; serve $W/repo $W/s0.log; stop
echo "== beta truncated bank, gamma half-written version 2, leftover deploy folders"
.venv/bin/python - <<PY
import os, shutil
r = "$W/repo"
p = f"{r}/exdd_beta_scorer/1/banks/negative.npy"; d = open(p, "rb").read(); open(p, "wb").write(d[:-100])
h = f"{r}/exdd_gamma_scorer/2"; shutil.copytree(f"{r}/exdd_gamma_scorer/1", h); os.remove(f"{h}/banks/manifest.json")
shutil.copytree(f"{r}/exdd_alpha_scorer/1", f"{r}/.exdd-deploy-old")
PY
serve $W/repo $W/s1.log; grep "^product\|^removed\|^ready" $W/s1.log | cut -c1-200
echo "== stray unload"; curl -s -o /dev/null -w "unload without key: HTTP %{http_code}\n" -XPOST 127.0.0.1:18100/v2/repository/models/exdd_alpha_scorer/unload
curl -s -o /dev/null -w "alpha ready after it: HTTP %{http_code}\n" 127.0.0.1:18100/v2/models/exdd_alpha/ready
curl -s -o /dev/null -w "health/ready: HTTP %{http_code}\n" 127.0.0.1:18100/v2/health/ready
echo "== repair beta by deploy"; t0=$(date +%s.%N); $X deploy $B --repository $W/repo --product beta --url 127.0.0.1:18100; echo "deploy: $(echo "$(date +%s.%N) - $t0" | bc) s"
curl -s -o /dev/null -w "beta ready: HTTP %{http_code}\n" 127.0.0.1:18100/v2/models/exdd_beta/ready
echo "== deploy killed (SIGKILL) 2 s in"
$X deploy $B --repository $W/repo --product alpha --url 127.0.0.1:18100 > $W/d.log 2>&1 & DP=$!
sleep 2; kill -9 $DP; wait $DP 2>/dev/null
ls -a $W/repo $W/repo/exdd_alpha_scorer | tr '\n' ' '; echo
curl -s -o /dev/null -w "alpha ready after the kill: HTTP %{http_code}\n" 127.0.0.1:18100/v2/models/exdd_alpha/ready
$X deploy $B --repository $W/repo --product alpha --url 127.0.0.1:18100 2>&1 | cut -c1-400
stop
rm $W/repo/.exdd-deploy.lock
echo "== restart after the killed deploy"; serve $W/repo $W/s2.log; grep "^product\|^removed\|^warning" $W/s2.log | cut -c1-200; stop

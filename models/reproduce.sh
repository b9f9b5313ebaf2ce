#!/usr/bin/env bash
# Rebuilds models/dispense-cpu from nothing, with the seeds it was built with:
#   1. 100 scripted-expert demonstrations in the twin, through the real pipeline
#      (drivers -> synchronizer -> recorder); placements from twin seeds 0..99; the
#      expert holds the force for 1.2 s before it lifts;
#   2. the cpu preset (RGB + depth + force) and the no-force ablation, trained on
#      the successful ones (train seed 0, config/train.yaml), side by side with one
#      torch thread each;
#   3. both evaluated over the same 50 lockstep episodes (twin seeds 10000..10049),
#      the full model also in real time through the drivers;
#   4. both training curves in one figure.
#
#   bash models/reproduce.sh [WORKDIR]        (default runs/reproduce)
#
# About 1 h 30 min on a 2-core machine (see models/README.md for the measured times).
# Steps whose output exists are skipped, so an interrupted run continues where it
# stopped (a training run resumes with --resume). The recordings go through the
# real-time pipeline, so they are not bit-identical between runs (timing jitter);
# placements, training and evaluation are seeded.
set -euo pipefail

W=${1:-runs/reproduce}
EPISODES=${EVAL_EPISODES:-50}
REALTIME_EPISODES=${REALTIME_EPISODES:-10}
mkdir -p "$W"
log() { printf '%s  %s\n' "$(date +%H:%M:%S)" "$*"; }

if [ ! -f "$W/demos.json" ]; then
  log "recording 100 demonstrations into $W/demos (~32 min)"
  demuse record --sim --episodes 100 --seconds 30 --out "$W/demos" --no-keyboard \
    --task dispense --operator scripted-expert --expert-hold-s 1.2 --json >"$W/demos.json.part"
  mv "$W/demos.json.part" "$W/demos.json"
fi

train() {  # name, extra --set arguments...
  local name=$1
  shift
  local resume=()
  [ -f "$W/$name/trainer.json" ] && resume=(--resume)
  demuse train --out "$W/$name" --recordings "$W/demos" --successful-only --no-progress \
    --set threads=1 --set steps=6000 --set model.latent_channels=8 \
    --set model.rgb_summary=true --set standardize_latents=true \
    --set state_noise=0.3 --set model.wrench_history=8 \
    --set autoencoder_steps=800 --set autoencoder_foreground_weight=20 \
    "$@" "${resume[@]}" >>"$W/$name.log" 2>&1
}
if [ ! -f "$W/full/training_curve.png" ] || [ ! -f "$W/noforce/training_curve.png" ]; then
  log "training full and no-force models (logs: $W/full.log, $W/noforce.log)"
  train full &
  full=$!
  train noforce --set 'model.modalities=[rgb,depth]' &
  noforce=$!
  wait "$full"
  wait "$noforce"
fi

python -m demuse_ros.model.curve "$W/full" "$W/noforce" \
  --labels "RGB + depth + force" "RGB + depth (no force)" --out "$W/training_curves.png"

evaluate() {  # name, mode, episodes
  local out="$W/eval-$1-$2"
  [ -f "$out/eval.json" ] && return 0
  log "evaluating $1 ($2, $3 episodes)"
  demuse eval --sim --policy "$W/$1/best" --mode "$2" --episodes "$3" --out "$out" --json \
    >"$out.log" 2>&1
}
evaluate full lockstep "$EPISODES"
evaluate noforce lockstep "$EPISODES"
evaluate full realtime "$REALTIME_EPISODES"

python - "$W" <<'EOF'
import json, sys
from pathlib import Path

w = Path(sys.argv[1])
for path in sorted(w.glob("eval-*/eval.json")):
    s = json.loads(path.read_text())["summary"]
    lo, hi = s["success_rate_ci95"]
    print(
        f"{path.parent.name:24s} success {s['successes']}/{s['episodes']} "
        f"({s['success_rate']:.0%}, 95 % CI {lo:.0%}-{hi:.0%})  "
        f"force error {s['force_error_n_median']} N  time {s['time_to_success_s_median']} s"
    )
EOF
log "done: copy $W/full/best to models/dispense-cpu to ship it"

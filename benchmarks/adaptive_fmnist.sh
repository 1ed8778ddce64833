#!/usr/bin/env bash
# Adaptive generation on Fashion-MNIST end to end, every stage one `tokgen` command (README "Adaptive generation").
#   bash benchmarks/adaptive_fmnist.sh            # all stages, in order, on 2 CPU cores
#   bash benchmarks/adaptive_fmnist.sh halting    # from one stage on: tokenizer | halting | tokens | generators | score
# Each stage's wall time goes to runs/adaptive_fmnist/times.txt; the numbers go to benchmarks/*.json (see README).
set -euo pipefail
cd "$(dirname "$0")/.."
EPS_LIST=${EPS_LIST:-0.08,0.09,0.1,0.11,0.12}   # halting's target errors (per-pixel L1 on [0, 1] images)
EPS_RANGE=${EPS_RANGE:-0.06,0.16}          # the range the halting head is trained for
EPS=${EPS:-0.1}                           # the target error of the generator's token shards
NUM=${NUM:-100}                            # samples per class (x 10 classes)
OUT=runs/adaptive_fmnist
mkdir -p "$OUT"
stages=(tokenizer halting tokens generators score)
start=${1:-tokenizer}
run=0
stamp() { echo "$1 $(( $(date +%s) - t0 )) s" | tee -a "$OUT/times.txt"; }

for stage in "${stages[@]}"; do
  [[ $stage == "$start" ]] && run=1
  [[ $run == 1 ]] || continue
  t0=$(date +%s)
  case $stage in
    tokenizer)  # nested tokenizer, scored per prefix on the 10k test images
      tokgen fit --config configs/tokenizer/fmnist_small.yaml
      tokgen eval --ckpt runs/fmnist_small/checkpoints/last.ckpt --data fmnist --budgets 1,2,4,8,16,32 \
          --metrics psnr --floors --out runs/fmnist_small/eval/fmnist.json ;;
    halting)  # error-model halting head on the frozen nested encoder; one threshold per eps calibrated on val
      tokgen refit-halting --ckpt runs/fmnist_small/checkpoints/last.ckpt --data fmnist --eps-range "$EPS_RANGE" \
          --num-images 6000 --prefixes 8 --head-hidden 256 --steps 4000 --calibrate 0.86 --calibrate-images 1024 \
          --target-errors "$EPS_LIST" --out runs/fmnist_halting/halting.ckpt
      python benchmarks/halting.py --ckpt runs/fmnist_halting/halting.ckpt --data fmnist --num-images 2000 \
          --target-errors "$EPS_LIST" --rho-eps "$EPS" --threads 2 --json benchmarks/halting_fmnist.json ;;
    tokens)  # the training split as token shards: adaptive lengths at EPS, and fixed K = 32
      tokgen tokenize --ckpt runs/fmnist_halting/halting.ckpt --data fmnist --split train --target-error "$EPS" \
          --out runs/tokens/fmnist_adaptive/train
      tokgen tokenize --ckpt runs/fmnist_small/checkpoints/last.ckpt --data fmnist --split train \
          --out runs/tokens/fmnist_small/train ;;
    generators)  # the same GPT recipe on both: with EOS over adaptive lengths, and fixed-length over 32 tokens
      tokgen fit --config configs/generator/fmnist_adaptive.yaml
      tokgen fit --config configs/generator/fmnist_small.yaml ;;
    score)  # the project's classifier, then samples: adaptive, fixed at the adaptive mean, fixed at K
      [[ -f features_fmnist.safetensors ]] || tokgen train-features --data fmnist --out features_fmnist.safetensors
      tokgen sample --tokenizer runs/fmnist_halting/halting.ckpt --generator runs/gen_fmnist_adaptive/checkpoints/last.ckpt \
          --eos --num "$NUM" --cfg 2.0 --classifier features_fmnist.safetensors --data-lengths runs/tokens/fmnist_adaptive/train \
          --out "$OUT/adaptive.png" --out-dir "$OUT/samples_adaptive" --metrics-json "$OUT/adaptive.json"
      mean=$(python -c "import json; print(round(json.load(open('$OUT/adaptive.json'))['lengths']['32']['sampled']['mean']))")
      tokgen sample --tokenizer runs/fmnist_small/checkpoints/last.ckpt --generator runs/gen_fmnist_small/checkpoints/last.ckpt \
          --budgets "$mean,32" --num "$NUM" --cfg 2.0 --classifier features_fmnist.safetensors \
          --out "$OUT/fixed.png" --out-dir "$OUT/samples_fixed" --metrics-json "$OUT/fixed.json"
      tokgen eval --samples "adaptive=$OUT/samples_adaptive/k32" --samples "fixed_k$mean=$OUT/samples_fixed/k$mean" \
          --samples "fixed_k32=$OUT/samples_fixed/k32" --data fmnist --feature-extractor features_fmnist.safetensors \
          --out "$OUT/gfid.json"
      python benchmarks/adaptive_generation.py --generator runs/gen_fmnist_adaptive/checkpoints/last.ckpt --num 1000 \
          --cfg 2.0 --threads 2 --json benchmarks/adaptive_generation.json ;;
  esac
  stamp "$stage"
done

#!/usr/bin/env bash
# GPU checks in one prepared call, for a session lent a GPU (the `device` tool; CI never has one).
#
# The GPU machine has no network and no Fashion-MNIST: carry the four IDX files in the ignored `data/` folder.
# Here, first:   mkdir -p data && cp -r /usr/share/datasets/fashion-mnist data/
# Then, one call: run(command="bash bench/gpu_check.sh", carry=["data"], timeout_s=560)
# Everything it measures lands in $OUT (one .txt per step), with the card's name; each step has its own time
# limit so that one slow step cannot take the others down; the limits add up to 490 s, inside the 560 s call.
set -u
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
export FASHION_MNIST_DIR=${FASHION_MNIST_DIR:-$PWD/data/fashion-mnist}
step() {  # step NAME SECONDS COMMAND...: run with a time limit, keep its output, never stop the script
    local name=$1 limit=$2
    shift 2
    echo "== $name (limit ${limit}s): $*" | tee -a "$OUT/summary.txt"
    timeout "$limit" "$@" > "$OUT/$name.txt" 2>&1
    echo "   exit $? after ${SECONDS}s of the script" | tee -a "$OUT/summary.txt"
}
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
python3 -m pip install --no-deps -e . -q > "$OUT/pip.txt" 2>&1
python3 -c "import torch, pytorch_lightning as pl; print(torch.__version__, pl.__version__, torch.cuda.get_device_name())" \
    | tee -a "$OUT/summary.txt"
if python3 -c "import pytest" 2>/dev/null; then
    step tests 110 python3 -m pytest -q -p no:cacheprovider -o addopts="" tests/test_devices.py \
        tests/hub/test_save_load.py -k cuda
else
    echo "pytest is not installed on this machine: the cuda tests did not run" | tee -a "$OUT/summary.txt"
fi
# LayerFreezer under FSDP (CUDA only in Lightning 2.6 and torch 2.14): a backbone built in `configure_model`
step fsdp_check 45 python3 -m bench.fsdp_check
step loop_speed 110 python3 -m bench.loop_speed --epochs 4 --repeats 1 \
    --variants raw-control pl-floor ours-quiet ours typical
step callback_overhead 60 python3 -m bench.callback_overhead --quick --device cuda
step feature_cache 90 python3 -m bench.feature_cache --quick --device cuda
# the transfer study on Fashion-MNIST, one seed, variants a-d (pretraining included) on the GPU
step transfer_study 75 python3 examples/transfer_study.py --dataset fashion-mnist --data-dir "$FASHION_MNIST_DIR" \
    --seeds 1 --variants a b c d --trainer.accelerator gpu --out "$OUT/transfer_study"
for f in "$OUT"/loop_speed.txt "$OUT"/callback_overhead.txt "$OUT"/feature_cache.txt "$OUT"/tests.txt \
    "$OUT"/fsdp_check.txt "$OUT"/transfer_study.txt; do
    [ -f "$f" ] && { echo "---- $f"; grep -E '^\||passed|failed|error|Error|machine|overhead|PASS|FAIL' "$f" | tail -n 30; }
done

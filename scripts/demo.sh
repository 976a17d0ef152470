#!/usr/bin/env bash
# The whole job on a fresh machine, offline: set up, build the offline task suite,
# predict with full cache, H2O, H2O+VATP, Scissorhands and Scissorhands+VATP at the
# paper's 50% budget on the embedded SmolLM2-135M-Instruct, score, and compare.
# Reruns resume. SAMPLES, TOKENS and OUT can be overridden from the environment.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-demo_out}
SAMPLES=${SAMPLES:-4}
TOKENS=${TOKENS:-"800 1600"}
MODEL=smollm2-135m-instruct
TASKS="offline_qa offline_niah_multikey offline_vt offline_cwe offline_qa_haystack"

bash scripts/setup.sh
# shellcheck disable=SC2086
"$PY" -m vatp.longbench.suite --out "$OUT/data" --samples "$SAMPLES" --tokens $TOKENS --tasks $TASKS

declare -A FLAGS=(
  ["full"]="--heavy_ratio 1.0"
  ["h2o"]="--heavy_ratio 0.25 --h2o"
  ["h2o_vatp"]="--heavy_ratio 0.25 --h2o --apval --sink_len 20"
  ["scissorhands"]="--heavy_ratio 0.25"
  ["scissorhands_vatp"]="--heavy_ratio 0.25 --apval --sink_len 20"
)
declare -A LABEL=(["full"]="Full cache" ["h2o"]="H2O" ["h2o_vatp"]="H2O+VATP"
                  ["scissorhands"]="Scissorhands" ["scissorhands_vatp"]="Scissorhands+VATP")
RUNS=()
for m in full h2o h2o_vatp scissorhands scissorhands_vatp; do
  echo "== ${LABEL[$m]}: python pred.py --model $MODEL --save $OUT/$m ${FLAGS[$m]}"
  # shellcheck disable=SC2086
  "$PY" pred.py --model "$MODEL" --data_dir "$OUT/data" --datasets $TASKS --save "$OUT/$m" ${FLAGS[$m]}
  "$PY" eval.py --model "$MODEL" --save "$OUT/$m" > /dev/null
  RUNS+=(--run "${LABEL[$m]}=$OUT/$m/$MODEL")
done
"$PY" -m vatp.analysis.report "${RUNS[@]}" --out "$OUT/report"
echo "Report: $OUT/report/report.md and $OUT/report/report.png"

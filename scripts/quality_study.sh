#!/usr/bin/env bash
# The quality study of docs/quality.md on a GPU machine (torch, transformers), in stages that each
# fit one 10-minute run. From the repository root:
#
#   bash scripts/quality_study.sh setup       corpus, tokenizer, the two models at init, task data, tokens
#                                             (finetune and evaluate redo the corpus and their data when
#                                             they run on a fresh machine with only the trained models)
#   bash scripts/quality_study.sh pretrain    full attention from init until STUDY_DEADLINE: the study
#                                             model on all GPUs but the last (torchrun), the small default
#                                             model on the last
#   bash scripts/quality_study.sh finetune    from the pre-trained models, one run per GPU in parallel, each
#                                             at most 1000 steps in STUDY_FT_SECONDS: LCA, full (control),
#                                             MTLA s = 4 and s = 16 (study model), LCA (default model)
#   bash scripts/quality_study.sh evaluate    every model and method on the harness, in parallel; the report
#   bash scripts/quality_study.sh answers     LCA fine-tuned on the tasks' answers alone (one padded row per
#                                             task, loss on the answer), evaluated with LCA and window-only
#   bash scripts/quality_study.sh scratch     LCA from the first step: the small model pre-trained from its
#                                             init twice, with LCA and with full attention, for the same time
#                                             until STUDY_DEADLINE, or for STUDY_SCRATCH_STEPS steps each (one
#                                             GPU each, or one shared), then both evaluated with their own
#                                             attention and with the window alone (STUDY_SCRATCH_RUNS="lca"
#                                             trains and evaluates the LCA run only)
#
# Everything is written under $STUDY (default study/). The sizes are the variables below; the
# numbers in docs/quality.md come from the defaults on four H100s.
set -euo pipefail

S=${STUDY:-study}
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}python
export TOKENIZERS_PARALLELISM=true
SEQ=${STUDY_SEQ:-4096}
CONTEXTS=${STUDY_CONTEXTS:-1024,2048,4096}
WINDOW=${STUDY_WINDOW:-1024}
GROUP=${STUDY_GROUP:-16}
CORPUS_MB=${STUDY_CORPUS_MB:-120}
TASK_WORKERS=${STUDY_TASK_WORKERS:-16}
TASKS_PER_WORKER=${STUDY_TASKS_PER_WORKER:-100}   # per task and context
FT_TASKS_PER_WORKER=${STUDY_FT_TASKS_PER_WORKER:-20}
FT_SECONDS=${STUDY_FT_SECONDS:-240}
SAMPLES=${STUDY_SAMPLES:-40}
GPUS=$(python3 -c 'import torch; print(torch.cuda.device_count())')

# The study model (DeepSeek-V2 architecture: MLA, dense MLP) and the small default model that README's
# demo runs on the CPU (a few MiB in bf16).
STUDY_MODEL="--hidden 384 --layers 8 --heads 6 --kv-lora-rank 128 --intermediate 1024"
SMALL_MODEL="--hidden 192 --layers 4 --heads 3 --kv-lora-rank 64 --intermediate 768"

tasks() {  # name seed-base per-worker tokenizer-model [contexts]: solved tasks (seeds unlike the evaluation's 0)
  mkdir -p "$S/tasks"
  for i in $(seq 0 $((TASK_WORKERS - 1))); do
    python3 -m lca.evaluate --write-training "$S/tasks/$1-$i.jsonl" --tokenizer "$S/$4" --contexts "${5:-$CONTEXTS}" \
      --samples "$3" --seed $(($2 + i)) >/dev/null &
  done
  wait
  echo "$1 tasks: $(cat "$S"/tasks/"$1"-*.jsonl | wc -l) documents"
}

corpus() {  # once per machine (the folders are those of the machine's own Python and docs)
  [ -f "$S/corpus/done" ] && return
  site=$(python3 -c 'import site; print(site.getsitepackages()[0])')
  python3 scripts/quality_corpus.py --out "$S/corpus" --extra /usr/share/doc "$site" --max-total-mb "$CORPUS_MB"
  touch "$S/corpus/done"
}

common_train() {  # the data options every training run shares
  echo --data "$S/corpus/train.txt" --task-data "$S"/tasks/"$1"-*.jsonl --pack-tasks --token-cache "$S/$1-tokens.pt" \
    --seq-len "$SEQ"
}

case "${1:-}" in
setup)
  corpus
  head -c 15000000 "$S/corpus/train.txt" >"$S/corpus/tokenizer.txt"
  python3 -m lca.make_model --arch deepseek_v2 --text "$S/corpus/tokenizer.txt" --vocab 8192 $STUDY_MODEL \
    --max-positions 8192 --out "$S/init"
  python3 -m lca.make_model --arch deepseek_v2 --tokenizer "$S/init" $SMALL_MODEL --max-positions 8192 --out "$S/small-init"
  tasks pretrain 1000 "$TASKS_PER_WORKER" init
  python3 -m lca.finetune --model "$S/init" $(common_train pretrain) --tokenize-only --out "$S/unused"
  ;;
pretrain)
  : "${STUDY_DEADLINE:?set STUDY_DEADLINE (epoch seconds) to when the models must be saved}"
  budget=$((STUDY_DEADLINE - $(date +%s) - 60))
  echo "pre-training for $budget s on $GPUS GPUs"
  CUDA_VISIBLE_DEVICES=$((GPUS - 1)) python3 -m lca.finetune --model "$S/small-init" --attention full \
    $(common_train pretrain) --batch-size 8 --grad-accum 1 --steps 100000 --time-budget "$budget" --lr 2e-3 \
    --warmup 100 --save-every 0 --out "$S/small-base" >"$S/small-pretrain.log" 2>&1 &
  small=$!
  CUDA_VISIBLE_DEVICES=$(seq -s, 0 $((GPUS - 2))) torchrun --standalone --nproc-per-node $((GPUS - 1)) -m lca.finetune \
    --model "$S/init" --attention full $(common_train pretrain) --batch-size 8 --grad-accum 1 --steps 100000 \
    --time-budget "$budget" --lr 1e-3 --warmup 100 --save-every 0 --out "$S/base" 2>&1 | tr '\r' '\n' >"$S/pretrain.log"
  wait $small
  grep -E "time budget|final loss" "$S/pretrain.log" "$S/small-pretrain.log"
  ;;
finetune)
  corpus
  [ -f "$S/finetune-tokens.pt" ] || {
    tasks finetune 2000 "$FT_TASKS_PER_WORKER" base
    python3 -m lca.finetune --model "$S/base" $(common_train finetune) --tokenize-only --out "$S/unused"
  }
  run() {  # gpu model out options...
    local gpu=$1 model=$2 out=$3
    shift 3
    CUDA_VISIBLE_DEVICES=$gpu python3 -m lca.finetune --model "$S/$model" $(common_train finetune) --batch-size 8 \
      --grad-accum 1 --steps 1000 --time-budget "$FT_SECONDS" --lr 3e-4 --warmup 50 --save-every 0 --out "$S/$out" \
      "$@" >"$S/$out.log" 2>&1
  }
  run 0 base lca-ft --attention lca --window "$WINDOW" --group "$GROUP" &
  run 1 base full-ft --attention full &
  run $((2 % GPUS)) base mtla4-ft --attention mtla --down-rate 4 &
  run $((3 % GPUS)) base mtla16-ft --attention mtla --down-rate 16 &
  run $((1 % GPUS)) small-base small-lca-ft --attention lca --window "$WINDOW" --group "$GROUP" &
  wait
  for f in "$S"/*-ft.log; do echo "$f: $(tr '\r' '\n' <"$f" | grep -E "time budget|final loss" | tr '\n' ' ')"; done
  ;;
evaluate)
  # One process per (model, method), spread over the GPUs and run together: the models are small,
  # so each process is bound by kernel launches and several share a GPU well.
  corpus
  i=0
  for job in ${STUDY_EVAL_JOBS:-base:full base:lca base:lca-anchor-only base:window-only lca-ft:lca \
    lca-ft:lca-anchor-only lca-ft:window-only full-ft:full mtla4-ft:mtla mtla16-ft:mtla small-lca-ft:full \
    small-lca-ft:lca}; do
    model=${job%%:*} method=${job#*:}
    [ -d "$S/$model" ] || { echo "skipping $job: no model $S/$model"; continue; }
    CUDA_VISIBLE_DEVICES=$((i % GPUS)) python3 -m lca.evaluate --model "$S/$model" --label "$model" --methods "$method" \
      --contexts "$CONTEXTS" --samples "$SAMPLES" --window "$WINDOW" --group "$GROUP" --heldout "$S/corpus/heldout.txt" \
      --ppl-sequences 8 --out "$S/eval-$model-$method.json" >"$S/eval-$model-$method.log" 2>&1 &
    i=$((i + 1))
  done
  wait
  python3 -m lca.evaluate --report "$S"/eval-*.json --plot "$S/quality.png" | tee "$S/report.txt"
  ;;
answers)
  [ -f "$S/tasks/answers-0.jsonl" ] || tasks answers 3000 40 base 2048,4096
  python3 -m lca.finetune --model "$S/base" --attention lca --window "$WINDOW" --group "$GROUP" \
    --task-data "$S"/tasks/answers-*.jsonl --answer-loss --seq-len "$SEQ" --batch-size 8 --grad-accum 1 --steps 1000 \
    --time-budget "$FT_SECONDS" --lr 3e-4 --warmup 30 --save-every 0 --out "$S/lca-answers" >"$S/lca-answers.log" 2>&1
  tr '\r' '\n' <"$S/lca-answers.log" | grep -E "time budget|final loss"
  for method in lca window-only; do
    python3 -m lca.evaluate --model "$S/lca-answers" --label lca-answers --methods $method --contexts 2048,4096 \
      --samples "$SAMPLES" --window "$WINDOW" --group "$GROUP" --out "$S/eval-lca-answers-$method.json" \
      >"$S/eval-lca-answers-$method.log" 2>&1 &
  done
  wait
  python3 -m lca.evaluate --report "$S"/eval-lca-answers-*.json
  ;;
scratch)
  [ -d "$S/small-init" ] || { echo "scratch: no $S/small-init (run setup first)" >&2; exit 2; }
  runs=${STUDY_SCRATCH_RUNS:-lca full}
  jobs=""
  for att in $runs; do
    case $att in
    lca) jobs="$jobs small-scratch-lca:lca small-scratch-lca:window-only" ;;
    full) jobs="$jobs small-scratch-full:full small-scratch-full:lca small-scratch-full:window-only" ;;
    *) echo "scratch: STUDY_SCRATCH_RUNS holds lca and/or full, got $att" >&2; exit 2 ;;
    esac
  done
  if [ -n "${STUDY_SCRATCH_STEPS:-}" ]; then  # the same steps for both runs (LCA's take longer)
    length="--steps $STUDY_SCRATCH_STEPS"
    echo "pre-training the small model ($runs) for $STUDY_SCRATCH_STEPS steps on $GPUS GPUs"
  else  # the same time for both runs
    : "${STUDY_DEADLINE:?set STUDY_DEADLINE (epoch seconds) to when the models must be saved, or STUDY_SCRATCH_STEPS}"
    budget=$((STUDY_DEADLINE - $(date +%s) - 30))
    length="--steps 100000 --time-budget $budget"
    echo "pre-training the small model ($runs) for $budget s on $GPUS GPUs"
  fi
  gpu=0
  for att in $runs; do
    opts=""
    [ "$att" = lca ] && opts="--window $WINDOW --group $GROUP"
    CUDA_VISIBLE_DEVICES=$((gpu % GPUS)) python3 -m lca.finetune --model "$S/small-init" --attention $att $opts \
      $(common_train pretrain) --batch-size 8 --grad-accum 1 $length --lr 2e-3 \
      --warmup 100 --save-every 0 --out "$S/small-scratch-$att" >"$S/small-scratch-$att.log" 2>&1 &
    gpu=$((gpu + 1))
  done
  wait
  for f in "$S"/small-scratch-*.log; do echo "$f: $(tr '\r' '\n' <"$f" | grep -E "time budget|final loss" | tr '\n' ' ')"; done
  STUDY_EVAL_JOBS="$jobs" bash "$0" evaluate
  ;;
*)
  echo "usage: bash scripts/quality_study.sh setup|pretrain|finetune|evaluate|answers|scratch" >&2
  exit 2
  ;;
esac

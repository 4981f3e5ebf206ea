#!/usr/bin/env bash
# `lca generate` end to end on SmolLM2-135M-Instruct (scripts/get-smollm2.sh):
# greedy "The capital of France is" must continue with Paris under full
# attention and LCA, with the summary line. Exits 77 (ctest: Skipped) without the file.
set -euo pipefail
lca="$1"
model="${LCA_SMOLLM2_GGUF:-$HOME/.cache/lca/SmolLM2-135M-Instruct.Q4_1.gguf}"
if [ ! -s "$model" ]; then
  echo "SKIPPED: $model not found (run scripts/get-smollm2.sh or set LCA_SMOLLM2_GGUF)"
  exit 77
fi
err="$(mktemp)"
trap 'rm -f "$err"' EXIT
for attention in full lca; do
  out="$("$lca" generate --model "$model" --prompt "The capital of France is" --max-new-tokens 4 \
         --attention "$attention" 2>"$err")" || { echo "FAIL: lca generate exited with an error"; cat "$err"; exit 1; }
  echo "$attention: $out"
  grep -q "Paris" <<<"$out" || { echo "FAIL: no Paris under $attention"; cat "$err"; exit 1; }
  grep -q "prompt 5 tokens, prefill .* decode .* tokens/s; KV cache .* MiB full-equivalent, .* MiB actual" "$err" ||
    { echo "FAIL: no summary line"; cat "$err"; exit 1; }
done
echo "generate on SmolLM2: ok"

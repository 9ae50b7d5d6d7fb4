#!/usr/bin/env bash
# Create (or reuse) the project virtual environment and install the package with its test extras.
# Sourced by scripts/main.sh and scripts/test.sh, so each README command sets itself up on a fresh machine.
# GEORSCLIP_VENV picks another venv folder (default: .venv in the repository root).
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${GEORSCLIP_VENV:-$repo_root/.venv}"
python_bin="${PYTHON:-python3}"
stamp="$venv/.georsclip-installed"
want="$(sha256sum "$repo_root/pyproject.toml" | cut -d' ' -f1)"
if [ ! -x "$venv/bin/python" ]; then
  echo "[setup] creating virtual environment in $venv"
  "$python_bin" -m venv "$venv"
fi
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[setup] installing georsclip[test] into $venv (first run: a few minutes)"
  "$venv/bin/python" -m pip install -q --upgrade pip
  "$venv/bin/python" -m pip install -q -e "$repo_root[test]"
  echo "$want" > "$stamp"
fi
export PATH="$venv/bin:$PATH"
export VIRTUAL_ENV="$venv"

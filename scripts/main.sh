#!/usr/bin/env bash
# The README's main-job command: set up the venv if needed, then run the main job on the embedded default.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup.sh
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}" TOKENIZERS_PARALLELISM=false
python -m modeling_georsclip.main "$@"

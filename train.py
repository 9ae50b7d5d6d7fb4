"""Thin shim over ``modeling_georsclip.train`` (same flags, same outputs): ``accelerate launch train.py ...``.

    accelerate launch train.py --config configs/ret2.yaml [--key value ...]
    python train.py --config tiny_cpu --max_steps 20 --output_dir runs/demo

Installed users run ``georsclip-train`` or ``accelerate launch -m modeling_georsclip.train`` instead.
"""

import sys

from modeling_georsclip.train import main

if __name__ == "__main__":
    sys.exit(main())

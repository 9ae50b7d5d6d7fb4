"""Fine-tune GeoRSCLIP (contrastive, global batch, exact resume).

    accelerate launch -m modeling_georsclip.train --config ret2 [--key value ...]
    georsclip-train --config tiny_cpu --max_steps 20 --output_dir runs/demo
    python train.py --config configs/tiny_cpu.yaml ...          # the repository's thin shim, same flags

``--config`` takes a packaged recipe name (tiny_cpu, ret2, rs5m_vitb32, lora) or a YAML path. Any config key
can be overridden as ``--key value`` (YAML-parsed); ``--resume latest`` continues the newest checkpoint in
``output_dir``; ``--push_to_hub OWNER/NAME`` uploads the final folder after everything is saved.
See docs/training.md.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from .distributed import leave_process_group
    from .hub import PushError
    from .inference import ModelLoadError
    from .resources import ResourceError, resolve_config
    from .training import ConfigError, ResumeError, TrainConfig, train
    from .training.stream import DataError

    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    config_path = None
    if "--config" in args:
        i = args.index("--config")
        if i + 1 >= len(args):
            print("error: --config needs a recipe name or a YAML file", file=sys.stderr)
            return 2
        config_path = args[i + 1]
        del args[i : i + 2]
    args = [a.replace("--push-to-hub", "--push_to_hub") for a in args]
    try:
        if config_path is not None:
            config_path = str(resolve_config(config_path))
        cfg = TrainConfig.load(config_path, args)
        train(cfg)
    except (ConfigError, DataError, ResumeError, ResourceError, ModelLoadError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except PushError as err:  # everything was saved before the push was tried
        print(f"error: {err}", file=sys.stderr)
        return 3
    finally:
        leave_process_group()  # also on error paths: a rank exiting with a live gloo group aborts
    return 0


if __name__ == "__main__":
    sys.exit(main())

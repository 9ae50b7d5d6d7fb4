"""Fine-tune GeoRSCLIP (contrastive, global batch, exact resume).

    accelerate launch train.py --config configs/ret2.yaml [--key value ...]
    python train.py --config configs/tiny_cpu.yaml --max_steps 20 --output_dir runs/demo

Any config key can be overridden as ``--key value`` (YAML-parsed); ``--resume latest`` continues the newest
checkpoint in ``output_dir``; ``--push_to_hub OWNER/NAME`` uploads the final folder after everything is saved.
See docs/training.md.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from modeling_georsclip.data.loader import DataError
    from modeling_georsclip.hub import PushError
    from modeling_georsclip.training import ConfigError, ResumeError, TrainConfig, train

    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    config_path = None
    if "--config" in args:
        i = args.index("--config")
        if i + 1 >= len(args):
            print("error: --config needs a YAML file", file=sys.stderr)
            return 2
        config_path = args[i + 1]
        del args[i : i + 2]
    args = [a.replace("--push-to-hub", "--push_to_hub") for a in args]
    try:
        cfg = TrainConfig.load(config_path, args)
        train(cfg)
    except (ConfigError, DataError, ResumeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except PushError as err:  # everything was saved before the push was tried
        print(f"error: {err}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())

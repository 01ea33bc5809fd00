"""``lfm-policy train``: train a policy from a JSON config plus ``key=value`` overrides, or resume a run."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``train`` subcommand."""
    p = subparsers.add_parser(
        "train", help="train a policy on a replay buffer (or resume a run)",
        description="Train a policy. Overrides use dotted keys and JSON values, e.g. "
                    "policy.head.kind=fm total_steps=2000 data.path=demos.zarr. "
                    "`lfm-policy train --resume OUT_DIR` continues a run from its saved config "
                    "(OUT_DIR/train_config.json) and latest checkpoint.")
    p.add_argument("--config", default=None, help="JSON training config (see configs/); not needed with --resume")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    p.add_argument("--resume", nargs="?", const="", default=None, metavar="OUT_DIR",
                   help="continue the run in OUT_DIR (default: the config's out_dir) from checkpoints/latest; "
                        "the config must equal the saved one except device, compile, logging and rollout fields")
    p.add_argument("--overwrite", action="store_true", help="start over in an out_dir that already holds a run")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (a log line per validation)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Entry point of ``lfm-policy train``."""
    from lfm_policy.errors import LfmPolicyError
    from lfm_policy.train import TrainConfig, resume_config, train

    if args.resume is not None and args.overwrite:
        raise LfmPolicyError("--resume and --overwrite exclude each other")
    if args.config is None and not args.resume:
        raise LfmPolicyError("give --config CONFIG (a new run) or --resume OUT_DIR (continue a run)")
    if args.config is not None:
        config = TrainConfig.from_json(args.config).with_overrides(args.overrides)
        if args.resume:
            config = config.replace(out_dir=args.resume)
    else:
        config = resume_config(args.resume, args.overrides)
    path = train(config, resume=args.resume is not None, overwrite=args.overwrite, progress=not args.no_progress)
    print(f"checkpoint: {path}")
    return 0

"""``lfm-policy train``: train a policy from a JSON config plus ``key=value`` overrides."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``train`` subcommand."""
    p = subparsers.add_parser(
        "train", help="train a policy on a replay buffer",
        description="Train a policy. Overrides use dotted keys and JSON values, e.g. "
                    "policy.head.kind=fm total_steps=2000 data.path=demos.zarr")
    p.add_argument("--config", required=True, help="JSON training config (see configs/)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    p.add_argument("--resume", action="store_true", help="continue from OUT_DIR/checkpoints/latest")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Entry point of ``lfm-policy train``."""
    from lfm_policy.train import TrainConfig, train

    config = TrainConfig.from_json(args.config).with_overrides(args.overrides)
    path = train(config, resume=args.resume, progress=not args.no_progress)
    print(f"checkpoint: {path}")
    return 0

"""``lfm-policy distill``: one-step (k-step) students for the blocks of a trained lfm / fm checkpoint."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``distill`` subcommand."""
    p = subparsers.add_parser(
        "distill", help="distill a trained lfm/fm policy's blocks into one-step students (NFE = blocks)",
        description="Distill each block of a trained lfm (or the one block of an fm) checkpoint into a student "
                    "whose k Euler steps match the block's accurate (RK4) reverse map. The result in OUT is an "
                    "ordinary checkpoint (OUT/checkpoints/latest) with policy.nfe() = blocks × k. "
                    "`lfm-policy distill --resume OUT` continues after a kill.")
    p.add_argument("checkpoint", nargs="?", default=None, help="trained lfm or fm checkpoint (the teacher)")
    p.add_argument("--out", default=None, help="run directory of the distillation")
    p.add_argument("--steps", type=int, default=2000, help="optimizer steps per student (default 2000)")
    p.add_argument("--block-steps", type=int, default=1, help="Euler steps of each student (its NFE; default 1)")
    p.add_argument("--blocks", type=int, nargs="+", default=None, metavar="N",
                   help="blocks to distill (default all); the others keep their ODE")
    p.add_argument("--inputs", choices=("teacher_path", "student_path"), default="student_path",
                   help="where the students' training inputs come from (default student_path)")
    p.add_argument("--sample", default=None, metavar="S0,S1,...",
                   help="default solver of each block in the result, e.g. student,student,student,midpoint:2 "
                        "(default: student where distilled, the teacher's sampler elsewhere)")
    p.add_argument("--data", default=None, help="demonstrations (default: the teacher run's data.path)")
    p.add_argument("--batch-size", type=int, default=None, help="default: the teacher run's")
    p.add_argument("--lr", type=float, default=3e-4, help="learning rate of the students (default 3e-4)")
    p.add_argument("--tolerance", type=float, default=0.01,
                   help="the teacher's RK4 steps double until the endpoint moves less than this share of its RMS")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="overrides of the distillation's train config")
    p.add_argument("--resume", default=None, metavar="OUT", help="continue the distillation in OUT")
    p.add_argument("--overwrite", action="store_true", help="start over in an OUT that already holds a run")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Entry point of ``lfm-policy distill``."""
    from lfm_policy import Policy
    from lfm_policy.distill import format_summary, setup_distillation, write_summary
    from lfm_policy.errors import LfmPolicyError
    from lfm_policy.flow.solvers import parse_solvers
    from lfm_policy.train import resume_config, train

    if args.resume is not None:
        if args.checkpoint is not None or args.out is not None:
            raise LfmPolicyError("--resume OUT continues a distillation: give no CHECKPOINT or --out")
        config = resume_config(args.resume, args.overrides)
        if config.policy.head.distill is None:
            raise LfmPolicyError(f"{args.resume}: not a distillation run (use lfm-policy train --resume)")
    else:
        if args.checkpoint is None or args.out is None:
            raise LfmPolicyError("give CHECKPOINT and --out OUT (or --resume OUT)")
        sample = parse_solvers(args.sample) if args.sample is not None else None
        config = setup_distillation(args.checkpoint, args.out, steps=args.steps, block_steps=args.block_steps,
                                    blocks=args.blocks, inputs=args.inputs, sample=sample,
                                    data=args.data, batch_size=args.batch_size, lr=args.lr,
                                    tolerance=args.tolerance, overrides=args.overrides)
    path = train(config, resume=args.resume is not None, overwrite=args.overwrite, progress=not args.no_progress)
    policy = Policy.load(path)
    print(format_summary(write_summary(policy, config)))
    print(f"checkpoint: {path} (NFE {policy.nfe()})")
    return 0

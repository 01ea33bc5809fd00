"""``lfm-policy serve``: serve a checkpoint to robots over WebSockets (registered by ``lfm_policy.cli``).

Heavy imports (torch, websockets) happen inside the command function.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``serve`` to the top-level parser."""
    p = subparsers.add_parser(
        "serve", help="serve a checkpoint's action chunks over WebSockets (msgpack) to robot clients",
        description="Load CHECKPOINT once and answer metadata/reset/infer requests from any number of "
        "PolicyClient connections (lfm_policy.runtime.client). Binds to 127.0.0.1 unless --host is given; "
        "use --token-file whenever the port is reachable from other machines. Ctrl-C or SIGTERM stops it.")
    p.add_argument("checkpoint", help="checkpoint directory (model.safetensors + policy.json)")
    p.add_argument("--host", default="127.0.0.1",
                   help="interface to bind (default 127.0.0.1, this machine only; 0.0.0.0 for every interface)")
    p.add_argument("--port", type=int, default=8765, help="TCP port (default 8765; 0 picks a free one, logged)")
    p.add_argument("--token-file", default=None, metavar="FILE",
                   help="file holding a shared secret; clients must send 'Authorization: Bearer <secret>'")
    p.add_argument("--solver", default=None, metavar="SOLVER",
                   help="euler/midpoint/heun/rk4[:STEPS] or student for every flow block, one per block as a list "
                        "(student,student,midpoint:1), or ddim[:STEPS]/ddpm for a diffusion head "
                        "(default: the checkpoint's)")
    p.add_argument("--device", default="cpu", help="inference device (default cpu)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads of this process (default 1: small policies are fastest that way)")
    p.add_argument("--max-message-mb", type=float, default=32.0, metavar="M",
                   help="largest request in MiB; a bigger one closes that connection (default 32)")
    p.set_defaults(func=_serve)


def read_token(path: str | Path) -> str:
    """The shared secret in ``path`` (surrounding whitespace stripped).

    Raises:
        LfmPolicyError: The file cannot be read, is empty, or holds non-printable/non-ASCII characters.

    """
    from lfm_policy.errors import LfmPolicyError

    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        raise LfmPolicyError(f"--token-file {path}: cannot read it ({e})") from None
    if not token:
        raise LfmPolicyError(f"--token-file {path}: the file is empty")
    if not (token.isascii() and token.isprintable()):
        raise LfmPolicyError(f"--token-file {path}: the token must be printable ASCII on one line")
    return token


def _serve(args: argparse.Namespace) -> int:
    import torch

    from lfm_policy import Policy
    from lfm_policy.errors import LfmPolicyError
    from lfm_policy.runtime.interface import parse_solver
    from lfm_policy.runtime.server import PolicyServer

    torch.set_num_threads(max(1, args.threads))
    # websockets logs every connection at INFO and every frame at DEBUG; the server logs its own summary.
    logging.getLogger("websockets").setLevel(logging.WARNING)
    token = read_token(args.token_file) if args.token_file is not None else None
    if not 0 <= args.port <= 65535:
        raise LfmPolicyError(f"--port must be in 0..65535, got {args.port}")
    if args.max_message_mb <= 0:
        raise LfmPolicyError(f"--max-message-mb must be > 0, got {args.max_message_mb}")
    policy = Policy.load(args.checkpoint, map_location=args.device)
    solver = parse_solver(policy, args.solver)
    extra = {"checkpoint": str(args.checkpoint)}
    if args.solver is not None:
        extra["solver_arg"] = args.solver
    server = PolicyServer(policy, host=args.host, port=args.port, token=token, solver=solver,
                          max_message_bytes=int(args.max_message_mb * 2**20), **extra)
    server.serve_forever()
    return 0

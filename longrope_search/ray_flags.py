"""The Ray flags, defined once for every command that scores on Ray (``run``, ``recover``,
``serve``): the main CLI and the service's commands both add them from here."""

from __future__ import annotations

import argparse


def ray_options(p: argparse.ArgumentParser, *, per: str) -> None:
    """The Ray flags of ``run``, ``recover`` and ``serve`` (``per``: " per job" for a server)."""
    p.add_argument("--ray", action="store_true",
                   help="score on a pool of Ray workers (a local Ray cluster unless --address); "
                        "default: in this process, every listener on loopback")
    p.add_argument("--address", default=None,
                   help="Ray cluster to join, e.g. ray://head:10001; implies --ray")
    p.add_argument("--workers", type=int, default=None,
                   help=f"Ray scorer actors{per} (model replicas; default one per GPU of the "
                        "cluster)")
    p.add_argument("--gpus-per-worker", type=float, default=None,
                   help="GPUs per worker (default 1 when the cluster has GPUs, else 0)")


def on_ray(args: argparse.Namespace) -> bool:
    """Whether a search scores on Ray: ``--ray`` or ``--address`` (``serve`` also takes
    ``$RAY_ADDRESS``)."""
    return bool(args.ray or args.address)

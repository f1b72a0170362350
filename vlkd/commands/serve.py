"""``vlkd serve``: serve a frozen CLIP teacher over HTTP, with dynamic batching (needs ``vlkd[serve]``).

Training jobs point at it with ``RemoteTeacher`` (``--model.init_args.teacher_service.url``);
the API is in ``docs/teacher_service.md``. With no arguments it serves the shipped
offline teacher on http://127.0.0.1:8000.

    vlkd serve                                           # the shipped teacher, loopback only
    vlkd serve --teacher ViT-B-16 --pretrained openai --precision bf16 --replicas 2
    VLKD_SERVE_TOKEN=secret vlkd serve --host 0.0.0.0    # other machines: a token is required
    vlkd serve --address auto --min-replicas 1 --max-replicas 8   # autoscale on a running Ray cluster
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
from collections.abc import Sequence

from vlkd.commands.teacher_options import add_teacher_arguments, teacher_weights
from vlkd.errors import ConfigError


def build_parser() -> argparse.ArgumentParser:
    from vlkd.teacher.server import DEFAULT_HOST, DEFAULT_PORT, TOKEN_ENV, ServeLimits

    limits = ServeLimits()
    parser = argparse.ArgumentParser(prog="vlkd serve", description=__doc__.split("\n\n")[0])
    add_teacher_arguments(parser, "the teacher to serve")
    parser.add_argument("--host", default=DEFAULT_HOST,
                        help=f"address to listen on (default {DEFAULT_HOST}; any other needs a token)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    parser.add_argument("--token", default=None,
                        help=f"bearer token clients must send (default: ${TOKEN_ENV} if set, else none)")
    parser.add_argument("--replicas", type=int, default=1, help="teacher replicas (default 1)")
    parser.add_argument("--min-replicas", type=int, default=None, help="autoscaling: fewest replicas")
    parser.add_argument("--max-replicas", type=int, default=None,
                        help="autoscaling: most replicas (turns autoscaling on; --replicas is then ignored)")
    parser.add_argument("--max-batch", type=int, default=64,
                        help="most images per forward pass; concurrent requests are merged up to it (default 64; "
                             "1 turns batching off)")
    parser.add_argument("--batch-wait-ms", type=float, default=5.0,
                        help="how long a forward pass waits for more images (default 5 ms)")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--device", default="auto", help="cpu, cuda, or auto (a GPU when there is one)")
    parser.add_argument("--replica-cpus", type=float, default=1.0, help="CPUs Ray reserves per replica (default 1)")
    parser.add_argument("--replica-gpus", type=float, default=None,
                        help="GPUs per replica (default: 1 when --device is cuda or auto finds one, else 0)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per replica (default: torch's)")
    parser.add_argument("--address", default=None,
                        help="join this Ray cluster (e.g. auto) instead of starting one on this machine")
    parser.add_argument("--num-cpus", type=int, default=None,
                        help="CPUs of the local Ray instance (default: all of this machine's)")
    parser.add_argument("--max-body-mb", type=float, default=limits.max_body_mb,
                        help=f"largest request body (default {limits.max_body_mb:g} MiB)")
    parser.add_argument("--max-images", type=int, default=limits.max_images,
                        help=f"most images per request (default {limits.max_images})")
    parser.add_argument("--max-side", type=int, default=limits.max_side,
                        help=f"largest image side in pixels (default {limits.max_side})")
    parser.add_argument("--max-texts", type=int, default=limits.max_texts,
                        help=f"most sentences per request (default {limits.max_texts})")
    return parser


def config_from_args(args: argparse.Namespace):
    from vlkd.teacher.server import TOKEN_ENV, ServeConfig, ServeLimits

    teacher, pretrained = teacher_weights(args)
    for name in ("port", "replicas", "max_batch", "max_images", "max_side", "max_texts"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if not 0 < args.port < 65536:
        raise ConfigError(f"--port must be between 1 and 65535, got {args.port}")
    if args.max_replicas is not None and args.max_replicas < (args.min_replicas or 1):
        raise ConfigError("--max-replicas must be at least --min-replicas (and at least 1)")
    limits = ServeLimits(max_body_mb=args.max_body_mb, max_images=args.max_images, max_side=args.max_side,
                         max_texts=args.max_texts)
    token = args.token or os.environ.get(TOKEN_ENV) or None
    return ServeConfig(teacher=teacher, pretrained=pretrained, precision=args.precision, device=args.device,
                       max_batch=args.max_batch, batch_wait_ms=args.batch_wait_ms, token=token, threads=args.threads,
                       limits=limits)


def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(list(argv))
    config = config_from_args(args)
    from vlkd.teacher.server import check_binding, serve_teacher

    check_binding(args.host, config.token)  # before Ray starts: a refusal costs nothing
    gpus = args.replica_gpus
    if gpus is None:
        import torch

        gpus = 1.0 if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else 0.0
    import ray
    from ray import serve

    stop = threading.Event()
    try:
        url = serve_teacher(config, args.host, args.port, replicas=args.replicas, min_replicas=args.min_replicas,
                            max_replicas=args.max_replicas, replica_cpus=args.replica_cpus, replica_gpus=gpus,
                            address=args.address, num_cpus=args.num_cpus)
        # After Ray started: it installs handlers of its own, and these must win to stop cleanly.
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: stop.set())
        print(f"serving {config.teacher} ({config.pretrained or 'random weights'}) at {url} "
              f"(max batch {config.max_batch}, {'token required' if config.token else 'no token'}); "
              "Ctrl+C stops it", flush=True)
        stop.wait()
    finally:
        if ray.is_initialized():
            serve.shutdown()
            ray.shutdown()
    return 0

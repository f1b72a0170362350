"""``vlkd cache``: compute a config's teacher outputs once, for every training sample and K views.

    vlkd cache --config configs/froster_synth.yaml --out caches/froster_synth_s1 --views 8
    vlkd fit --config configs/froster_synth.yaml --data.init_args.teacher_cache caches/froster_synth_s1
    vlkd cache --config configs/froster_k400.yaml --out /caches/k400 --views 8 --trainer.devices 8
    vlkd cache --verify caches/froster_synth_s1

The config's method says what to store (its teacher targets) and its data module
which samples and augmentations; ``--trainer.*`` overrides choose the devices and
nodes. A killed build continues where it stopped when run again; see
:mod:`vlkd.teacher.cache` for the format.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from pathlib import Path

from vlkd.errors import ConfigError

#: The trainer settings a cache build takes from the config: where to run, nothing about training.
TRAINER_KEYS = ("accelerator", "devices", "num_nodes", "strategy", "precision")


def build_parser() -> argparse.ArgumentParser:
    from vlkd.teacher.cache import DTYPES

    parser = argparse.ArgumentParser(
        prog="vlkd cache", description=__doc__.split("\n\n")[0],
        epilog="Any other option (--config, --data.init_args.*, --trainer.devices, ...) is read as by vlkd fit.")
    parser.add_argument("--out", help="the cache folder (created; an unfinished build there is continued)")
    parser.add_argument("--views", type=int, default=1,
                        help="augmentation views per sample (default 1: the evaluation view; e.g. 8 random "
                             "training views)")
    parser.add_argument("--shard-size", type=int, default=256, help="samples per shard file (default 256)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="clips per teacher forward pass (default: the data module's batch size)")
    parser.add_argument("--dtype", default="float16", choices=sorted(DTYPES),
                        help="how the outputs are stored (default float16)")
    parser.add_argument("--seed", type=int, default=None,
                        help="seed of the views (default: the config's seed_everything, else 0)")
    parser.add_argument("--verify", metavar="DIR", default=None,
                        help="instead of building: check every shard of the cache in DIR against its index")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def verify(folder: str) -> int:
    from vlkd.teacher.cache import verify_cache

    checked, problems = verify_cache(folder)
    if problems:
        print(f"{folder}: {len(problems)} problem(s) in {checked} shard(s):")
        for problem in problems:
            print(f"  {problem}")
        return 1
    print(f"{folder}: all {checked} shard(s) match their sha256")
    return 0


def main(argv: Sequence[str]) -> int:
    args, rest = build_parser().parse_known_args(list(argv))
    if args.verify:
        return verify(args.verify)
    if not args.out:
        raise ConfigError("vlkd cache needs --out DIR (or --verify DIR)")
    if not any(arg == "--config" or arg.startswith("--config=") for arg in rest):
        raise ConfigError("vlkd cache needs --config CONFIG: the config whose training set and method to cache")
    for name in ("views", "shard_size"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1")
    if args.batch_size is not None and args.batch_size < 1:
        raise ConfigError("--batch-size must be at least 1")
    return build(args, rest)


def build(args, lightning_args: list[str]) -> int:
    import lightning.pytorch as pl

    from vlkd.cli import build_from_config
    from vlkd.teacher.cache import DTYPES, CacheBuilder, ShardWriter, build_manifest

    cli = build_from_config(lightning_args)
    method, datamodule = cli.model, cli.datamodule
    if hasattr(method, "build_region_cache"):  # detection: region embeddings per image, not views of samples
        return build_regions(method, datamodule, args)
    if not getattr(method, "teacher_target_names", ()):
        raise ConfigError(f"{type(method).__name__} has no teacher outputs to cache (it trains without a teacher's "
                          "targets, or they are turned off)")
    datamodule.teacher_cache = None  # building a cache never reads one
    if os.environ.get("LOCAL_RANK", "0") == "0":  # once per machine; DDP's other ranks start after it
        datamodule.prepare_data()
    datamodule.setup("fit")
    if datamodule.train_dataset is None:
        raise ConfigError("the config's data module has no training set to cache (video data: set base2novel or "
                          "train_list; image data: a split with training images)")
    seed = args.seed if args.seed is not None else int(cli.config.get("seed_everything") or 0)
    batch_size = args.batch_size or datamodule.batch_size
    manifest = build_manifest(method, datamodule, args.views, seed, args.dtype, args.shard_size, batch_size)

    settings = {key: cli.config["trainer"][key] for key in TRAINER_KEYS if cli.config["trainer"].get(key) is not None}
    if not isinstance(settings.get("strategy", "auto"), str):
        settings.pop("strategy")  # a configured strategy object belongs to training
    trainer = pl.Trainer(**settings, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, use_distributed_sampler=False,
                         callbacks=[ShardWriter(DTYPES[args.dtype], show_progress=not args.no_progress)])
    folder = Path(args.out).expanduser()
    builder = CacheBuilder(method, datamodule.train_dataset, folder, manifest, num_workers=datamodule.num_workers)
    trainer.predict(builder, return_predictions=False)
    if trainer.is_global_zero:
        index = json.loads((folder / "index.json").read_text())
        missing = sum(len(entry["missing"]) for entry in index["shards"])
        print(f"teacher cache {folder}: {len(datamodule.train_dataset)} samples x {args.views} view(s) in "
              f"{builder.num_shards} shard(s) ({builder.kept} kept from an earlier build on this rank); "
              f"{missing} unreadable sample(s) listed in index.json")
    return 0


def build_regions(method, datamodule, args) -> int:
    """``vlkd cache`` of a detection config (EZAD): the base boxes' and CLIP proposals' embeddings of every
    training image, for the image and its mirror (the model's ``cache_views``; ``--views`` does not apply)."""
    if args.views != 1:
        raise ConfigError("a detection cache stores the image and its mirror image (model.init_args.cache_views), "
                          "not --views random views: drop --views")
    datamodule.teacher_cache = None
    datamodule.prepare_data()
    datamodule.setup("fit")
    folder = method.build_region_cache(datamodule, Path(args.out).expanduser(), dtype=args.dtype,
                                       shard_size=args.shard_size, progress=not args.no_progress)
    index = json.loads((folder / "index.json").read_text())
    missing = sum(len(entry["missing"]) for entry in index["shards"])
    print(f"detection cache {folder}: {len(datamodule.train_records)} training images in {len(index['shards'])} "
          f"shard(s); {missing} unreadable image(s) listed in index.json")
    return 0

"""The ``vlkd`` command line.

``vlkd fit|validate|test|predict`` are Lightning's CLI in subclass mode: any
LightningModule and LightningDataModule can be named by ``class_path`` (short
names work for vlkd's own), configs compose (several ``--config``, dotted
overrides), and the resolved config is saved beside the logs and checkpoints.
Other subcommands hang off the same entry point; ``vlkd --help`` lists them all.

Errors a user can cause print one line and exit with status 2; set
``VLKD_DEBUG=1`` to see the full traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
from collections.abc import Callable, Sequence

from vlkd import __version__
from vlkd.errors import ConfigError, VlkdError

LIGHTNING_COMMANDS = {
    "fit": "train a method (then validate) from a config: vlkd fit --config configs/X.yaml",
    "validate": "run the validation loop once (e.g. zero-shot evaluation of a frozen teacher)",
    "test": "evaluate on the test sets and write results.json / results.md in the log folder",
    "predict": "run the model's predict step over the data module's predict set",
}

#: Extra subcommands: name -> (module with a ``main(argv) -> int``, one-line help).
EXTRA_COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("vlkd.commands.synth", "build the offline worlds (actions, images, detection, tasks) or the tiny teacher (teacher)"),
    "zeroshot": ("vlkd.commands.zeroshot", "evaluate a frozen teacher zero-shot on a video split: base / novel / HM"),
    "encode": ("vlkd.commands.encode", "dense per-frame features of long videos with ResidualViT (or the full ViT)"),
    "demo": ("vlkd.commands.demo", "a local web page for zero-shot action queries on a video (needs vlkd[demo])"),
    "export": ("vlkd.commands.export", "write a trained student as a folder that loads without Lightning (video "
               "students: open_clip; DHO: timm; EZAD: the detector)"),
    "serve": ("vlkd.commands.serve", "serve a frozen CLIP teacher over HTTP with dynamic batching (needs vlkd[serve])"),
    "cache": ("vlkd.commands.cache", "compute a config's teacher outputs once, for training to read back (--verify checks one)"),
    "detect": ("vlkd.commands.detect", "find objects named in free text on images with a trained EZAD detector (COCO JSON + PNGs)"),
}


def register_command(name: str, module: str, help_line: str) -> None:
    """Add a subcommand whose ``module.main(argv)`` is called with the remaining arguments."""
    EXTRA_COMMANDS[name] = (module, help_line)


def _usage() -> str:
    lines = [f"usage: vlkd <command> [options]   (vlkd {__version__})", "", "commands:"]
    width = max(map(len, [*LIGHTNING_COMMANDS, *EXTRA_COMMANDS]))
    for name, help_line in LIGHTNING_COMMANDS.items():
        lines.append(f"  {name:<{width}}  {help_line}")
    for name, (_, help_line) in EXTRA_COMMANDS.items():
        lines.append(f"  {name:<{width}}  {help_line}")
    lines += ["", "`vlkd <command> --help` describes a command's options; `python -m vlkd` works the same."]
    return "\n".join(lines)


def _lightning_cli_class():
    """vlkd's LightningCLI: the final test after fit, and one-line errors for configs that do not build."""
    from lightning.pytorch.cli import LightningCLI

    # Importing the packages registers vlkd's modules as subclasses, so configs
    # can name them by short class name.
    import vlkd.data.continual  # noqa: F401
    import vlkd.data.datamodule  # noqa: F401
    import vlkd.data.detection_datamodule  # noqa: F401
    import vlkd.data.image_datamodule  # noqa: F401
    import vlkd.methods  # noqa: F401

    class VlkdLightningCLI(LightningCLI):
        def after_fit(self) -> None:
            # A fit ends with the final evaluation (with the averaged weights where
            # EpochWeightAveraging is used): base / novel / HM printed and written
            # as results.json in the run's log folder.
            if self.trainer.interrupted or not getattr(self.model, "tests_after_fit", False):
                return
            self.trainer.test(self.model, datamodule=self.datamodule)

        def instantiate_classes(self) -> None:
            # jsonargparse reports a failing constructor as a ValueError listing every
            # union alternative; keep the one line that says what is wrong.
            try:
                super().instantiate_classes()
            except (ValueError, TypeError) as error:
                if _debug():
                    raise
                raise ConfigError(f"cannot build the objects of this config: {one_line(str(error))}") from None

    return VlkdLightningCLI


def _make_cli(argv: Sequence[str], **kwargs):
    import lightning.pytorch as pl

    saved_argv = sys.argv
    sys.argv = ["vlkd", *argv]  # LightningCLI reads sys.argv; this keeps `main(argv)` callable from Python
    try:
        return _lightning_cli_class()(
            pl.LightningModule,
            pl.LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            parser_kwargs={"exit_on_error": False},
            auto_configure_optimizers=False,
            **kwargs,
        )
    finally:
        sys.argv = saved_argv


def run_lightning(argv: Sequence[str]) -> None:
    """Run Lightning's CLI (subclass mode) on ``argv`` = ``[subcommand, *options]``."""
    from vlkd.methods.callbacks import ResumeHint

    _make_cli(argv, save_config_kwargs={"overwrite": True}, trainer_defaults={"callbacks": [ResumeHint()]})


def build_from_config(argv: Sequence[str]):
    """The model, data module and trainer a config describes, built but not run (``--config`` and overrides
    as for ``vlkd fit``); returns the LightningCLI, whose ``config`` holds the resolved settings."""
    return _make_cli(argv, run=False, save_config_callback=None)


_NOISE = re.compile(
    r"^(Does not validate against any|Subtypes:|Errors:|Expected a <class 'NoneType'>|Given value|"
    r"Problem with given class_path)"
)
_PARSER_KEY = re.compile(r'^Parser key "([^"]+)":\s*(.*)$')


def one_line(message: str) -> str:
    """Reduce jsonargparse's nested, multi-line message to ``dotted.key: what is wrong``.

    Nested ``Parser key "x":`` lines build the key path (``data.batch_size``); the
    deepest line that is not bookkeeping (the union alternatives tried, the value
    echoed back) is the reason.
    """
    keys: list[str] = []
    reason = ""
    for raw in str(message).splitlines():
        line = raw.strip().lstrip("- ").strip()
        if not line or _NOISE.match(line):
            continue
        match = _PARSER_KEY.match(line)
        if match:
            keys.append(match.group(1))
            line = match.group(2)
            if not line:
                continue
        reason = line
    if not reason:
        reason = "invalid arguments"
    return (f"{'.'.join(keys)}: {reason}" if keys else reason)[:600]


def _debug() -> bool:
    return os.environ.get("VLKD_DEBUG", "") not in ("", "0")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        print(f"vlkd {__version__}")
        return 0
    command, rest = argv[0], argv[1:]
    runner: Callable[[], object]
    if command in LIGHTNING_COMMANDS:
        runner = lambda: run_lightning([command, *rest])  # noqa: E731
    elif command in EXTRA_COMMANDS:
        module = importlib.import_module(EXTRA_COMMANDS[command][0])
        runner = lambda: module.main(rest)  # noqa: E731
    else:
        print(f"vlkd: error: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    try:
        result = runner()
    except argparse.ArgumentError as error:
        if _debug():
            raise
        print(f"vlkd {command}: error: {one_line(str(error))}", file=sys.stderr)
        return 2
    except VlkdError as error:
        if _debug():
            raise
        print(f"vlkd {command}: error: {error}", file=sys.stderr)
        return 2
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())

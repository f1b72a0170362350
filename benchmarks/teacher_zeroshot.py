"""Frozen teacher, zero-shot on SynthActions: base / novel / HM and static vs temporal classes, over seeds s1..s3.

    python benchmarks/teacher_zeroshot.py                      # the shipped teacher
    python benchmarks/teacher_zeroshot.py --teacher /tmp/t     # e.g. a teacher reproduced with `vlkd synth teacher`

Renders the default world into --world if needed, runs `vlkd zeroshot` for each
split seed, and writes benchmarks/results/<name>.json and .md (mean ± std).
Chance is 100 / 24 = 4.17 % on each half (24 base, 24 novel classes).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from vlkd.cli import main as vlkd
from vlkd.eval import markdown_table, summarize_seeds, write_results

RESULTS = Path(__file__).parent / "results"


def run(teacher: str, pretrained: str | None, world: Path, templates: str, frames: int) -> list[dict]:
    if vlkd(["synth", "actions", "--out", str(world)]) != 0:
        sys.exit("could not render the world")
    runs = []
    for seed in ("s1", "s2", "s3"):
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "zs.json"
            args = ["zeroshot", "--teacher", teacher, "--data", str(world), "--split", seed, "--templates", templates,
                    "--frames", str(frames), "--json", str(out)]
            if pretrained:
                args += ["--pretrained", pretrained]
            if vlkd(args) != 0:
                sys.exit(f"zeroshot failed on {seed}")
            result = json.loads(out.read_text())
        runs.append({"base": result["base"], "novel": result["novel"], "hm": result["hm"], **result["groups"]})
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", default="vlkd-synth-vit")
    parser.add_argument("--pretrained", default=None)
    parser.add_argument("--world", default="synth/flat", type=Path)
    parser.add_argument("--templates", default="video")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--name", default="teacher_zeroshot")
    args = parser.parse_args()
    runs = run(args.teacher, args.pretrained, args.world, args.templates, args.frames)
    summary = summarize_seeds(runs)
    write_results({"seeds": runs, "mean_std": summary, "teacher": args.teacher, "templates": args.templates},
                  RESULTS, name=args.name)
    columns = ["base", "novel", "hm", "base_static", "base_temporal", "novel_static", "novel_temporal",
               "base_twin_error_share", "novel_twin_error_share"]
    table = markdown_table([{"teacher": args.teacher, **{k: summary[k] for k in columns}}], ["teacher", *columns])
    (RESULTS / f"{args.name}.md").write_text(f"# Frozen teacher zero-shot on SynthActions (s1..s3, mean ± std)\n\n{table}")
    print(table)


if __name__ == "__main__":
    main()

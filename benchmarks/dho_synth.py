"""DHO on the offline SynthImages world: DHO against its baselines at 1 % and 10 % labels and 16 shots,
DHO's heads alone, the teacher's zero-shot accuracy, and the gradient conflict of one head against two.

    python benchmarks/dho_synth.py                                  # every regime, seeds 1-3 (~4 h on 2 cores)
    python benchmarks/dho_synth.py --regimes 10percent --seeds 1 2 3 --variants dho logit_kd ce

Every run is `python -m vlkd fit --config configs/dho_synth.yaml` with the regime's labelled list of split
seed s and `seed_everything` s, so the variants of one seed share the data order, the augmentations and
the student's initial weights (the variants differ only in their losses). Test top-1 is on the world's
test split; DHO's alpha and beta were chosen on the validation split.

Writes benchmarks/results/dho_synth.{json,md} (accuracy), dho_synth_conflict.{json,md} and
dho_synth_conflict.png (the cosine between the CE and KD gradients on the shared feature over training).
Finished runs are kept under benchmarks/runs/dho_synth/ (delete it to redo them).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from vlkd.eval import markdown_table, summarize_seeds, write_results

HERE = Path(__file__).parent
REPO = HERE.parent
RESULTS = HERE / "results"
RUNS = HERE / "runs" / "dho_synth"
CONFIG = REPO / "configs" / "dho_synth.yaml"
WORLD = REPO / "synth" / "images"
REGIMES = ("1percent", "10percent", "shot_16")
VARIANTS = ("dho", "logit_kd", "feature_kd", "ce")
LABELS = {"dho": "DHO (two heads, combined)", "logit_kd": "one head, CE + logit KD (Hinton)",
          "feature_kd": "one head, CE + feature KD", "ce": "CE only (labelled images)"}


def machine() -> str:
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"


def fit(regime: str, variant: str, seed: int) -> dict:
    """One run's summary (kept, so a finished run is not run again)."""
    out = RUNS / regime / variant / f"s{seed}"
    done = out / "summary.json"
    if done.is_file():
        return json.loads(done.read_text())
    start = time.perf_counter()
    command = [sys.executable, "-m", "vlkd", "fit", "--config", str(CONFIG), "--seed_everything", str(seed),
               "--data.init_args.root", str(WORLD), "--data.init_args.labelled", regime,
               "--data.init_args.split", str(seed), "--model.init_args.variant", variant,
               "--trainer.default_root_dir", str(out), "--trainer.enable_progress_bar", "false"]
    subprocess.run(command, check=True, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    (results,) = sorted(out.rglob("results.json"))[-1:]
    metrics = json.loads(results.read_text())["metrics"]
    summary = {"test_top1": metrics["test_top1"], "alpha": metrics["alpha"], "beta": metrics["beta"],
               "minutes": (time.perf_counter() - start) / 60}
    if variant == "dho":
        summary.update(ce_head=metrics["test_ce_head_top1"], kd_head=metrics["test_kd_head_top1"])
        summary["val_top1_at_choice"] = _last_logged(out, "val/val_search_top1")
    summary["grad_cosine"] = _logged_series(out, "train/grad_cosine")
    done.write_text(json.dumps(summary, indent=2))
    return summary


def _rows(out: Path) -> list[dict]:
    (log,) = sorted(out.rglob("metrics.csv"))[-1:]
    with open(log, newline="") as handle:
        return list(csv.DictReader(handle))


def _last_logged(out: Path, key: str) -> float | None:
    values = [float(row[key]) for row in _rows(out) if row.get(key)]
    return values[-1] if values else None


def _logged_series(out: Path, key: str) -> list[tuple[int, float]]:
    return [(int(row["step"]), float(row[key])) for row in _rows(out) if row.get(key)]


def teacher_zero_shot() -> float:
    """The frozen teacher's zero-shot top-1 on the test split (photo template), as ZeroShotCLIP evaluates it."""
    import lightning.pytorch as pl

    from vlkd.data import SynthImagesDataModule
    from vlkd.methods import ZeroShotCLIP
    from vlkd.teacher import TeacherSpec

    data = SynthImagesDataModule(str(WORLD), num_workers=0)
    data.prepare_data()
    model = ZeroShotCLIP(TeacherSpec("vlkd-synth-vit", "synthactions"), templates="photo")
    trainer = pl.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=str(RUNS / "zeroshot"))
    trainer.test(model, datamodule=data, verbose=False)
    return model.eval_results["test_top1"]


def accuracy_rows(runs: dict, zero_shot: float, seeds: list[int]) -> list[dict]:
    rows = [{"regime": "any", "method": "teacher zero-shot (frozen CLIP)", "test_top1": zero_shot}]
    for regime, by_variant in runs.items():
        for variant, variant_runs in by_variant.items():
            summary = summarize_seeds(variant_runs)
            row = {"regime": regime, "method": LABELS[variant], "test_top1": summary["test_top1"]}
            if variant != "dho" and "dho" in by_variant:
                differences = [d["test_top1"] - r["test_top1"] for d, r in zip(by_variant["dho"], variant_runs)]
                row["dho_minus_this"] = ", ".join(f"{x:+.2f}" for x in differences)
            if variant == "dho":
                row["alpha, beta (per seed)"] = "; ".join(f"{r['alpha']:.2f}, {r['beta']:g}" for r in variant_runs)
                row["val_top1_at_choice"] = summarize_seeds([{"v": r["val_top1_at_choice"]} for r in variant_runs])["v"]
            row["minutes"] = summary["minutes"]
            rows.append(row)
            if variant == "dho":
                for head, label in (("ce_head", "DHO's CE head alone (alpha = 1)"),
                                    ("kd_head", "DHO's KD head alone (alpha = 0, beta = 1)")):
                    differences = [r["test_top1"] - r[head] for r in variant_runs]
                    rows.append({"regime": regime, "method": label,
                                 "test_top1": summarize_seeds([{"a": r[head]} for r in variant_runs])["a"],
                                 "dho_minus_this": ", ".join(f"{x:+.2f}" for x in differences)})
    return rows


def conflict(runs: dict) -> tuple[list[dict], dict]:
    """Mean gradient cosine per training third, one head (logit KD) against two (DHO), per regime."""
    rows, series = [], {}
    for regime, by_variant in runs.items():
        for variant in ("logit_kd", "dho"):
            if variant not in by_variant:
                continue
            per_seed = [run["grad_cosine"] for run in by_variant[variant]]
            series[f"{regime}/{variant}"] = per_seed
            thirds = []
            for part in range(3):
                values = [value for run in per_seed for value in
                          [v for _, v in run[part * len(run) // 3:(part + 1) * len(run) // 3]]]
                thirds.append(statistics.mean(values))
            every = [v for run in per_seed for _, v in run]
            rows.append({"regime": regime, "heads": "one (CE + logit KD)" if variant == "logit_kd" else "two (DHO)",
                         "mean_cosine": statistics.mean(every), "first_third": thirds[0], "middle_third": thirds[1],
                         "last_third": thirds[2], "negative_fraction": sum(v < 0 for v in every) / len(every)})
    return rows, series


def plot(series: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    regimes = sorted({key.split("/")[0] for key in series})
    figure, axes = plt.subplots(1, len(regimes), figsize=(4.2 * len(regimes), 3.2), squeeze=False, sharey=True)
    for axis, regime in zip(axes[0], regimes):
        for variant, colour in (("logit_kd", "tab:red"), ("dho", "tab:blue")):
            for index, run in enumerate(series.get(f"{regime}/{variant}", [])):
                steps, values = zip(*run)
                label = ("one head" if variant == "logit_kd" else "two heads (DHO)") if index == 0 else None
                axis.plot(steps, values, color=colour, alpha=0.6, linewidth=1, label=label)
        axis.axhline(0.0, color="grey", linewidth=0.8)
        axis.set_title(regime)
        axis.set_xlabel("training step")
    axes[0][0].set_ylabel("cos(dCE/df, dKD/df)")
    axes[0][0].legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--regimes", nargs="+", choices=REGIMES, default=list(REGIMES))
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    args = parser.parse_args()
    os.environ.setdefault("VLKD_OFFLINE", "1")
    from vlkd.data.synthetic.images import generate_images

    generate_images(WORLD)
    zero_shot = teacher_zero_shot()
    runs = {regime: {variant: [fit(regime, variant, seed) for seed in args.seeds] for variant in args.variants}
            for regime in args.regimes}
    rows = accuracy_rows(runs, zero_shot, args.seeds)
    header = ("# DHO on SynthImages\n\nTest top-1 (%), mean ± std over split seeds "
              f"{', '.join(map(str, args.seeds))} (each seed: its own labelled list and random stream, shared by "
              "every method); dho_minus_this: DHO's test top-1 minus this row's, per seed.\n\n"
              f"Machine: {machine()}.\n\n")
    write_results({"machine": machine(), "rows": rows, "runs": runs}, RESULTS, name="dho_synth")
    (RESULTS / "dho_synth.md").write_text(header + markdown_table(rows))
    conflict_rows, series = conflict(runs)
    if conflict_rows:
        write_results({"machine": machine(), "rows": conflict_rows}, RESULTS, name="dho_synth_conflict")
        (RESULTS / "dho_synth_conflict.md").write_text(
            "# Gradient conflict: one head against two\n\nCosine between the gradients of the labelled CE loss and "
            "the labelled KD loss on the shared feature, per image averaged, every 10 steps; over all seeds.\n\n"
            f"Machine: {machine()}.\n\n" + markdown_table(conflict_rows, digits=3))
        plot(series, RESULTS / "dho_synth_conflict.png")
    print(markdown_table(rows))
    print(markdown_table(conflict_rows, digits=3))


if __name__ == "__main__":
    main()

"""ZSCL's MTIL protocol on SynthTasks: zero-shot, sequential fine-tuning, LwF, WiSE-FT, ZSCL and MulKI over the
six tasks with the shipped teacher, mean ± std of transfer / average / last over seeds, and the cost per task.

    python benchmarks/continual_synth.py                                  # every method, seeds 1-3, order_1
    python benchmarks/continual_synth.py --order order_2
    python benchmarks/continual_synth.py --methods finetune mulki --seeds 1
    python benchmarks/continual_synth.py --methods zeroshot finetune --seeds 1 --iterations 3 \\
        --name continual_synth_smoke                                      # a smoke run: its own runs and results

Every run is `python -m vlkd fit --config configs/continual/<method>_synth.yaml` with `seed_everything` s and
`data.init_args.seed` s, so the methods of one seed share the student's start, the data streams (the order of
the images and their crops and flips) and the schedule (configs/continual/*_synth.yaml: 150 steps of 32 images
per task, lr 1e-4); they differ only in the method. The metrics are ZSCL's (vlkd.eval.continual): transfer (the
strict upper triangle, per column then across columns), average (every cell) and last (the final row), in %.

Tables: per method the three metrics (mean ± std over seeds; one seed: its values), minutes per task (training,
and the evaluation of the six test splits after it) and training steps/s (results.json's cost); MulKI minus each
other method on the three metrics, seed by seed; the acceptance checks as measured lines; and the mean accuracy
matrix of every method. Heatmaps of fine-tuning, ZSCL and MulKI (the mean matrix over seeds, the zero-shot row
above it) go to benchmarks/results/<name>_<method>.png.

Writes benchmarks/results/<name>.{json,md} (default name continual_synth). Finished runs are kept under
benchmarks/runs/<name>/<order>/<method>/s<seed> (delete a folder to redo its run); `--iterations N` overrides
`data.init_args.iterations_per_task` for smoke runs and needs a `--name` other than continual_synth, so it never
overwrites the real table or reuses its runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from vlkd.eval import continual_metrics, markdown_table, matrix_table, plot_accuracy_matrix, summarize_seeds
from vlkd.eval import write_results

HERE = Path(__file__).parent
REPO = HERE.parent
RESULTS = HERE / "results"
CONFIGS = REPO / "configs" / "continual"
DEFAULT_NAME = "continual_synth"
METHODS = ("zeroshot", "finetune", "lwf", "wiseft", "zscl", "mulki")
LABELS = {"zeroshot": "Zero-shot", "finetune": "Continual-FT", "lwf": "LwF", "wiseft": "WiSE-FT", "zscl": "ZSCL",
          "mulki": "MulKI"}
METRICS = ("transfer", "average", "last")
HEATMAPS = ("finetune", "zscl", "mulki")


def machine() -> str:
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"


def fit(runs: Path, order: str, method: str, seed: int, iterations: int | None) -> dict:
    """One run's summary (kept, so a finished run is not run again)."""
    out = runs / order / method / f"s{seed}"
    done = out / "summary.json"
    if done.is_file():
        summary = json.loads(done.read_text())
        if summary.get("iterations_override") != iterations:
            raise SystemExit(f"{out} was run with --iterations {summary.get('iterations_override')}, not "
                             f"{iterations}: delete it or use another --name")
        return summary
    start = time.perf_counter()
    command = [sys.executable, "-m", "vlkd", "fit", "--config", str(CONFIGS / f"{method}_synth.yaml"),
               "--seed_everything", str(seed), "--data.init_args.seed", str(seed),
               "--data.init_args.order", order, "--trainer.default_root_dir", str(out),
               "--trainer.enable_progress_bar", "false"]
    if iterations is not None:
        command += ["--data.init_args.iterations_per_task", str(iterations)]
    # One intra-op thread: the CPU is shared with the loader workers (and other benchmarks).
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "fit.log", "w") as log:
        process = subprocess.run(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    if process.returncode != 0:
        raise SystemExit(f"{method} seed {seed} failed (exit {process.returncode}); see {out / 'fit.log'}")
    found = sorted(out.rglob("results.json"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise SystemExit(f"{method} seed {seed}: no results.json under {out}; see {out / 'fit.log'}")
    content = json.loads(found[-1].read_text())
    tasks = content["cost"]["tasks"]
    rates = [t["steps_per_second"] for t in tasks if t.get("steps_per_second")]
    summary = {key: content[key] for key in METRICS}
    summary.update(
        train_minutes_per_task=statistics.mean(t["train_minutes"] for t in tasks),
        eval_minutes_per_task=statistics.mean(t["eval_minutes"] for t in tasks),
        steps_per_second=statistics.mean(rates) if rates else None,
        run_minutes=(time.perf_counter() - start) / 60,
        iterations_per_task=content["settings"]["iterations_per_task"],
        iterations_override=iterations,
        datasets=content["datasets"], matrix=content["matrix"], zero_shot=content["zero_shot"],
        results=str(found[-1].relative_to(REPO)))
    done.write_text(json.dumps(summary, indent=2))
    return summary


def method_rows(runs: dict) -> list[dict]:
    rows = []
    for method, summaries in runs.items():
        keys = [*METRICS, "train_minutes_per_task", "eval_minutes_per_task", "steps_per_second"]
        values = [{k: s[k] for k in keys if s.get(k) is not None} for s in summaries]
        row = {"method": LABELS[method], "seeds": len(summaries)}
        # one seed has no spread to show: its values, not "± 0.00"
        row.update(summarize_seeds(values) if len(values) > 1 else values[0])
        rows.append(row)
    return rows


def difference_rows(runs: dict, seeds: list[int]) -> list[dict]:
    """MulKI minus each other method on the three metrics, seed by seed (same seeds, same data streams)."""
    if "mulki" not in runs:
        return []
    rows = []
    for method, summaries in runs.items():
        if method == "mulki":
            continue
        row = {"MulKI minus": LABELS[method], "seeds": ", ".join(map(str, seeds))}
        for key in METRICS:
            row[key] = ", ".join(f"{a[key] - b[key]:+.2f}" for a, b in zip(runs["mulki"], summaries))
        rows.append(row)
    return rows


def _mean(runs: dict, method: str, key: str) -> float:
    return statistics.mean(s[key] for s in runs[method])


def acceptance(runs: dict) -> list[str]:
    """The acceptance checks as measured lines (per seed, and on the means)."""
    lines = []
    if "finetune" in runs:
        for index, summary in enumerate(runs["finetune"]):
            a = np.asarray(summary["matrix"])
            below = [d for d in range(len(a) - 1) if a[-1, d] < a[d, d]]
            names = [summary["datasets"][d] for d in below]
            lines.append(f"Continual-FT, seed {summary['seed']}: last row below the diagonal on {len(below)} of "
                         f"{len(a) - 1} earlier datasets ({', '.join(names) or 'none'}); "
                         f"largest drop (diagonal minus last) {max(a[d, d] - a[-1, d] for d in range(len(a) - 1)):+.2f}.")
    if "finetune" in runs and "zeroshot" in runs:
        zeroshot, finetune = _mean(runs, "zeroshot", "transfer"), _mean(runs, "finetune", "transfer")
        per_seed = ", ".join(f"{f['transfer'] - z['transfer']:+.2f}"
                             for f, z in zip(runs["finetune"], runs["zeroshot"]))
        verdict = "below" if finetune < zeroshot else "not below"
        lines.append(f"Continual-FT transfer {finetune:.2f} vs zero-shot {zeroshot:.2f}: {verdict} "
                     f"(per seed {per_seed}).")
    if "mulki" in runs:
        for other in ("finetune", "lwf", "wiseft", "zscl"):
            if other not in runs:
                continue
            parts = []
            for key in METRICS:
                mine, theirs = _mean(runs, "mulki", key), _mean(runs, other, key)
                wins = sum(a[key] > b[key] for a, b in zip(runs["mulki"], runs[other]))
                parts.append(f"{key} {mine:.2f} vs {theirs:.2f} ({mine - theirs:+.2f}; higher on {wins} of "
                             f"{len(runs['mulki'])} seeds)")
            lines.append(f"MulKI vs {LABELS[other]}: " + "; ".join(parts) + ".")
    return lines


def mean_matrix(summaries: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    matrix = np.mean([s["matrix"] for s in summaries], axis=0)
    zero_shot = np.mean([s["zero_shot"] for s in summaries], axis=0)
    return matrix, zero_shot


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--order", choices=("order_1", "order_2"), default="order_1")
    parser.add_argument("--iterations", type=int, default=None,
                        help="steps per task (data.init_args.iterations_per_task; smoke runs, needs --name)")
    parser.add_argument("--name", default=None,
                        help=f"results and runs name (default {DEFAULT_NAME}, with --order order_2 "
                             f"{DEFAULT_NAME}_order_2)")
    args = parser.parse_args()
    name = args.name or (DEFAULT_NAME if args.order == "order_1" else f"{DEFAULT_NAME}_{args.order}")
    if args.iterations is not None:
        if args.iterations < 1:
            parser.error("--iterations must be >= 1")
        if name in (DEFAULT_NAME, f"{DEFAULT_NAME}_order_2"):
            parser.error("--iterations is for smoke runs: give them their own --name (e.g. continual_synth_smoke)")
    os.environ.setdefault("VLKD_OFFLINE", "1")
    runs_folder = HERE / "runs" / name
    methods = [m for m in METHODS if m in args.methods]  # the table's order, whatever the command line's
    runs = {}
    for method in methods:
        runs[method] = []
        for seed in args.seeds:
            print(f"{LABELS[method]} seed {seed} ...", flush=True)
            summary = fit(runs_folder, args.order, method, seed, args.iterations)
            runs[method].append({**summary, "seed": seed})
    rows = method_rows(runs)
    differences = difference_rows(runs, args.seeds)
    checks = acceptance(runs)
    first = next(iter(runs.values()))[0]
    datasets, iterations = first["datasets"], first["iterations_per_task"]

    matrices, heatmaps = {}, {}
    for method, summaries in runs.items():
        matrix, zero_shot = mean_matrix(summaries)
        matrices[method] = {"matrix": matrix, "zero_shot": zero_shot, "metrics": {
            k: v for k, v in continual_metrics(matrix).items() if k in METRICS}}
        if method in HEATMAPS:
            title = f"{LABELS[method]} on SynthTasks {args.order}, mean of seeds {', '.join(map(str, args.seeds))}"
            path = plot_accuracy_matrix(matrix, datasets, RESULTS / f"{name}_{method}.png", title=title,
                                        zero_shot=zero_shot)
            heatmaps[method] = str(path.relative_to(REPO))

    seeds = ", ".join(map(str, args.seeds))
    header = (f"# MTIL on SynthTasks ({args.order}: {' → '.join(datasets)})\n\n"
              f"Top-1 (%) of every task's test split among its own class names after each stage; transfer / "
              f"average / last as ZSCL's, mean ± std over seeds {seeds} (each seed's student start and data streams "
              f"shared by every method); {iterations} steps per task"
              + (f" (--iterations {args.iterations}: a smoke run, not the benchmark)" if args.iterations else "")
              + ". Minutes per task: training, and the evaluation of every test split after it; steps/s: training "
              f"steps per second (results.json's cost; zero-shot trains nothing).\n\nMachine: {machine()}.\n\n")
    text = header + markdown_table(rows)
    if differences:
        text += "\n## MulKI minus each method, seed by seed (seeds " + seeds + ")\n\n" + markdown_table(differences)
    if checks:
        text += "\n## Acceptance checks (measured)\n\n" + "".join(f"- {line}\n" for line in checks)
    for method, entry in matrices.items():
        metrics = ", ".join(f"{k} {v:.2f}" for k, v in entry["metrics"].items())
        picture = f" Heatmap: {Path(heatmaps[method]).name}." if method in heatmaps else ""
        text += (f"\n## {LABELS[method]}: accuracy matrix (%), mean over seeds {seeds}\n\n{metrics}.{picture}\n\n"
                 + matrix_table(entry["matrix"], datasets, entry["zero_shot"]))
    write_results({"machine": machine(), "order": args.order, "datasets": datasets, "seeds": args.seeds,
                   "iterations_per_task": iterations, "smoke": args.iterations is not None, "rows": rows,
                   "mulki_minus": differences, "acceptance": checks, "mean_matrices": matrices,
                   "heatmaps": heatmaps, "runs": runs}, RESULTS, name=name)
    (RESULTS / f"{name}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()

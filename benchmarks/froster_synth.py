"""FROSTER against its baselines on SynthActions: base / novel / HM over split seeds s1..s3, plus cross-dataset.

    python benchmarks/froster_synth.py            # all rows, ~20 min on 2 CPU cores
    python benchmarks/froster_synth.py --seeds 1  # one seed
    python benchmarks/froster_synth.py --distill-weights 8 32   # FROSTER vs direct at other lambdas, ~20 min
    python benchmarks/froster_synth.py --init-offsets 100 200 300   # ... from more initial seeds, ~30 min

Rows (same data, same evaluation, same teacher):
  frozen teacher       ZeroShotCLIP, per-frame logits averaged
  fine-tuning          FineTuneCLIP (ViFi-CLIP style: both towers, temporal pooling, CE only)
  FROSTER              residual feature distillation, visual + text
  FROSTER w/o residual distillation straight to the teacher (no projector)
  FROSTER w/o text     visual distillation only

Every run also evaluates zero-shot on the "textured" world (partly new classes):
the cross-dataset column. Two more columns explain the rows: each run's HM minus
FROSTER's on the same seed, and how close the student's novel frame and class
embeddings stay to the teacher's (mean cosine). Each run is `vlkd fit` / `vlkd test` with a shipped
config; finished runs are reused (delete benchmarks/runs/ to redo them). The
table goes to benchmarks/results/froster_synth.{json,md}.

``--distill-weights`` asks a narrower question instead: does the residual projector
matter more when the distillation weight lambda is raised, i.e. when distilling
straight to the teacher starts to cost base accuracy? It runs FROSTER and the
no-projector ablation at each given lambda (and the config's own), and writes
benchmarks/results/froster_synth_lambda.{json,md}. ``--init-offsets`` runs the same pair from
more initial states (the split seeds stay s1..s3) and pools the paired differences, in
benchmarks/results/froster_synth_init.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml

from vlkd.cli import main as vlkd
from vlkd.eval import markdown_table, summarize_seeds, write_results

HERE = Path(__file__).parent
RESULTS = HERE / "results"
RUNS = HERE / "runs" / "froster_synth"
CROSS = ["--data.init_args.zero_shot_styles", "[textured]"]
CONFIG_DISTILL_WEIGHT = yaml.safe_load((HERE.parent / "configs" / "froster_synth.yaml").read_text())[
    "model"]["init_args"]["distill_weight"]

METHODS = {
    "frozen teacher": ("test", "configs/zeroshot_synth.yaml", []),
    "fine-tuning": ("fit", "configs/finetune_synth.yaml", []),
    "FROSTER": ("fit", "configs/froster_synth.yaml", []),
    "FROSTER w/o residual": ("fit", "configs/froster_synth.yaml", ["--model.init_args.residual", "false"]),
    "FROSTER w/o text distillation": ("fit", "configs/froster_synth.yaml", ["--model.init_args.text_distill", "false"]),
}


def run_dir(method: str, seed: int, distill_weight: float | None = None, init_offset: int = 0) -> Path:
    """Where a run lives: the main table's directly under the method's folder, runs at another
    lambda or initial seed under ``lambda<w>/``, ``init+<k>/`` or ``lambda<w>_init+<k>/``."""
    name = method.replace(" ", "_").replace("/", "")
    variant = []
    if distill_weight is not None and distill_weight != CONFIG_DISTILL_WEIGHT:
        variant.append(f"lambda{distill_weight:g}")
    if init_offset:
        variant.append(f"init+{init_offset}")
    return RUNS.joinpath(*(["_".join(variant)] if variant else []), name, f"s{seed}")


def run_one(method: str, seed: int, world: str, distill_weight: float | None = None, init_offset: int = 0) -> dict:
    """One run on split seed ``seed``, initialised with ``seed + init_offset`` (see :func:`run_dir`)."""
    command, config, extra = METHODS[method]
    out = run_dir(method, seed, distill_weight, init_offset)
    if distill_weight is not None and distill_weight != CONFIG_DISTILL_WEIGHT:
        extra = [*extra, "--model.init_args.distill_weight", str(distill_weight)]
    done = out / "summary.json"
    if done.is_file():
        return json.loads(done.read_text())
    start = time.perf_counter()
    args = [command, "--config", config, "--seed_everything", str(seed + init_offset), "--data.init_args.seed", str(seed),
            "--data.init_args.root", world, "--trainer.default_root_dir", str(out),
            "--trainer.enable_progress_bar", "false", *CROSS, *extra]
    if vlkd(args) != 0:
        raise SystemExit(f"{method} s{seed} failed")
    (results_file,) = sorted(out.rglob("results.json"))[-1:]
    metrics = json.loads(results_file.read_text())["metrics"]
    summary = {
        "base": metrics["base_top1"],
        "novel": metrics["novel_top1"],
        "hm": metrics["hm"],
        # Where the differences come from: single-frame (static) vs direction (temporal) classes.
        **{f"{half}_{group}": metrics[f"{half}_{group}_top1"] for half in ("base", "novel")
           for group in ("static", "temporal")},
        "cross_dataset": metrics["synth_textured_s1_top1"],
        "minutes": (time.perf_counter() - start) / 60,
    }
    done.write_text(json.dumps(summary, indent=2))
    return summary


@torch.inference_mode()
def teacher_agreement(method: str, seed: int, world: str) -> dict[str, float]:
    """How far training moved a run's student from the frozen teacher, on the novel half.

    ``novel_frame_cos``: mean cosine between the student's and the teacher's embeddings of
    the same frames of every novel evaluation video; ``novel_text_cos``: the same for the
    prompt-ensembled novel class embeddings. The teacher itself scores 1.
    """
    from vlkd.data import SynthActionsDataModule
    from vlkd.demo.handler import load_student_scorer

    if METHODS[method][0] != "fit":
        return {"novel_frame_cos": 1.0, "novel_text_cos": 1.0}
    (checkpoint,) = run_dir(method, seed).rglob("averaged.ckpt")
    student = load_student_scorer(checkpoint).method
    config = yaml.safe_load((HERE.parent / "configs" / "froster_synth.yaml").read_text())
    teacher = getattr(student, "teacher", None)
    if teacher is None:  # FineTuneCLIP keeps no teacher: rebuild the one it started from
        from vlkd.teacher import TeacherSpec

        teacher = TeacherSpec(**config["model"]["init_args"]["teacher"]).build()
    data = SynthActionsDataModule(**{**config["data"]["init_args"], "root": world, "num_workers": 0})
    data.setup("test")
    index = [eval_set.group for eval_set in data.eval_sets].index("novel")
    frame_cos = []
    for batch in data.test_dataloader()[index]:
        video = batch["video"].flatten(0, 1)  # (B * views, T, C, H, W)
        frame_cos.append(F.cosine_similarity(student.student.encode_video(video, normalize=True),
                                             teacher.encode_frames(video), dim=-1).flatten())
    names = data.eval_sets[index].class_names
    text_cos = F.cosine_similarity(student.class_embeddings(names), teacher.encode_text(names, student.templates), dim=-1)
    return {"novel_frame_cos": torch.cat(frame_cos).mean().item(), "novel_text_cos": text_cos.mean().item()}


def with_agreement(method: str, seed: int, world: str) -> dict:
    """The run's summary with :func:`teacher_agreement` added (computed once, stored with it)."""
    summary = run_one(method, seed, world)
    if "novel_frame_cos" not in summary:
        summary.update(teacher_agreement(method, seed, world))
        (run_dir(method, seed) / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


RESIDUAL_PAIR = ("FROSTER", "FROSTER w/o residual")


def residual_pair(seeds: list[int], world: str, distill_weight: float | None = None,
                  init_offset: int = 0) -> tuple[list[dict], list[dict]]:
    """FROSTER's and the direct ablation's runs on ``seeds``, each with ``direct_minus_froster``
    (the HM difference on the same split seed and initial seed)."""
    froster, direct = ([run_one(m, seed, world, distill_weight, init_offset) for seed in seeds] for m in RESIDUAL_PAIR)
    for runs in (froster, direct):
        for run, reference in zip(runs, froster):
            run["direct_minus_froster"] = run["hm"] - reference["hm"]
    return froster, direct


def distill_weight_sweep(weights: list[float], seeds: list[int], world: str) -> None:
    """FROSTER against direct distillation at several lambdas: the table behind the README's sweep."""
    columns = ["base", "novel", "hm", "direct_minus_froster", "base_temporal", "novel_temporal", "cross_dataset"]
    runs, rows = {}, []
    for weight in sorted({CONFIG_DISTILL_WEIGHT, *weights}):
        for method, method_runs in zip(RESIDUAL_PAIR, residual_pair(seeds, world, weight)):
            runs[f"{method}, lambda {weight:g}"] = method_runs
            summary = summarize_seeds(method_runs)
            rows.append({"method": method, "lambda": f"{weight:g}", **{c: summary[c] for c in columns}})
    write_results({"seeds": seeds, "runs": runs}, RESULTS, name="froster_synth_lambda")
    table = markdown_table(rows, ["method", "lambda", *columns])
    header = (f"# FROSTER vs distillation without the residual projector, by lambda (flat world, seeds {seeds}, "
              "mean ± std; top-1 %)\n\n"
              "lambda: the distillation weight in L = CE + lambda * (L_v + L_t).\n"
              "direct_minus_froster: the HM of the row minus FROSTER's at the same lambda and seed.\n\n")
    (RESULTS / "froster_synth_lambda.md").write_text(header + table)
    print(table)


def initial_seed_study(offsets: list[int], seeds: list[int], world: str) -> None:
    """FROSTER against direct distillation from more initial states (seed_everything = split seed + offset),
    pooled: is the HM difference between them distinguishable from zero?"""
    rows, differences, runs = [], [], {}
    for offset in sorted({0, *offsets}):
        froster, direct = residual_pair(seeds, world, init_offset=offset)
        runs[f"init+{offset}"] = {"FROSTER": froster, "FROSTER w/o residual": direct}
        paired = [run["direct_minus_froster"] for run in direct]
        differences += paired
        rows.append({"initial seeds": ", ".join(str(seed + offset) for seed in seeds),
                     "FROSTER HM": summarize_seeds(froster)["hm"], "direct HM": summarize_seeds(direct)["hm"],
                     "direct − FROSTER, per split seed": ", ".join(f"{d:+.2f}" for d in paired)})
    pooled = torch.tensor(differences, dtype=torch.float64)
    mean, std = pooled.mean().item(), pooled.std().item()
    stderr = std / len(differences) ** 0.5
    pooled_row = {"runs": len(differences), "mean": mean, "std": std, "standard_error": stderr,
                  "mean_over_standard_error": mean / stderr}
    write_results({"seeds": seeds, "offsets": sorted({0, *offsets}), "runs": runs, "pooled": pooled_row},
                  RESULTS, name="froster_synth_init")
    table = markdown_table(rows) + "\n" + markdown_table([pooled_row])
    header = (f"# FROSTER vs distillation without the residual projector, from several initial seeds "
              f"(flat world, split seeds {seeds}, lambda {CONFIG_DISTILL_WEIGHT:g}; HM %)\n\n"
              "Each run pairs with FROSTER's on the same split seed and initial seed; the last table pools "
              "every paired difference (direct − FROSTER).\n\n")
    (RESULTS / "froster_synth_init.md").write_text(header + table)
    print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--world", default="synth/flat", help="the flat world's folder (textured goes beside it)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--distill-weights", type=float, nargs="+", metavar="LAMBDA",
                        help="instead of the main table: FROSTER vs direct distillation at these lambdas")
    parser.add_argument("--init-offsets", type=int, nargs="+", metavar="K",
                        help="instead of the main table: FROSTER vs direct distillation, also initialised with "
                             "seed_everything = split seed + K")
    args = parser.parse_args()
    if args.distill_weights:
        distill_weight_sweep(args.distill_weights, args.seeds, args.world)
        return
    if args.init_offsets:
        initial_seed_study(args.init_offsets, args.seeds, args.world)
        return
    per_method = {m: [with_agreement(m, seed, args.world) for seed in args.seeds] for m in args.methods}
    columns = ["base", "novel", "hm", "base_static", "base_temporal", "novel_static", "novel_temporal",
               "cross_dataset", "novel_frame_cos", "novel_text_cos", "minutes"]
    if "FROSTER" in per_method:
        # Paired by seed: each seed's runs share a few-shot list and an initial state, so the
        # per-seed difference cancels what the seed does to every method alike.
        for runs in per_method.values():
            for run, froster in zip(runs, per_method["FROSTER"]):
                run["hm_minus_froster"] = run["hm"] - froster["hm"]
        columns.insert(3, "hm_minus_froster")
    summary = {m: summarize_seeds(runs) for m, runs in per_method.items()}
    rows = [{"method": m, **{c: summary[m][c] for c in columns}} for m in args.methods]
    for row in rows:  # cosines near 1 need a third decimal
        for column in ("novel_frame_cos", "novel_text_cos"):
            row[column] = f"{row[column].mean:.3f} ± {row[column].std:.3f}"
    write_results({"seeds": args.seeds, "runs": per_method, "mean_std": summary}, RESULTS, name="froster_synth")
    table = markdown_table(rows, ["method", *columns])
    header = (f"# FROSTER on SynthActions (flat world, seeds {args.seeds}, mean ± std; top-1 %)\n\n"
              "static / temporal: top-1 over the videos of single-frame classes and of direction twins "
              "(each still classified among all classes of its half).\n"
              "cross_dataset: zero-shot top-1 on the textured world's 48 classes (12 not in the flat world).\n"
              "hm_minus_froster: the row's HM minus FROSTER's on the same seed, mean ± std over seeds.\n"
              "novel_frame_cos / novel_text_cos: mean cosine of the student's embeddings of the novel "
              "evaluation frames / novel class prompts to the frozen teacher's (1 = unchanged).\n\n")
    (RESULTS / "froster_synth.md").write_text(header + table)
    print(table)


if __name__ == "__main__":
    main()

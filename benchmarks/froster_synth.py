"""FROSTER against its baselines on SynthActions: base / novel / HM over split seeds s1..s3, plus cross-dataset.

    python benchmarks/froster_synth.py            # all rows, ~25 min on 2 CPU cores
    python benchmarks/froster_synth.py --seeds 1  # one seed
    python benchmarks/froster_synth.py --distill-weights 8 32   # FROSTER vs direct at other lambdas, ~20 min
    python benchmarks/froster_synth.py --init-offsets 100 200 300   # ... from more initial seeds, ~30 min

Rows (same data, same evaluation, same teacher):
  frozen teacher       ZeroShotCLIP, per-frame logits averaged
  fine-tuning          FineTuneCLIP (ViFi-CLIP style: both towers, temporal pooling, CE only)
  FROSTER              residual feature distillation, visual + text
  FROSTER w/o residual distillation straight to the teacher (no projector)
  FROSTER w/o text     visual distillation only
  FROSTER, zero-padded ends   the authors' neighbour attention: the missing neighbour of
                       the first and last frame is zeros left in the softmax, not masked

Every run also evaluates zero-shot on the "textured" world (partly new classes):
the cross-dataset column. More columns explain the rows: each run's HM minus
FROSTER's on the same seed, how close the student's novel frame and class
embeddings stay to the teacher's (mean cosine), and, for runs with a residual
projector, how far it moves the frame embeddings and how much of the visual
distillation loss it removes. Each run is `vlkd fit` / `vlkd test` with a shipped
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
#: The shipped FROSTER config: its lambda is the main table's, its data settings the diagnostics'.
FROSTER_CONFIG = yaml.safe_load((HERE.parent / "configs" / "froster_synth.yaml").read_text())
CONFIG_DISTILL_WEIGHT = FROSTER_CONFIG["model"]["init_args"]["distill_weight"]

METHODS = {
    "frozen teacher": ("test", "configs/zeroshot_synth.yaml", []),
    "fine-tuning": ("fit", "configs/finetune_synth.yaml", []),
    "FROSTER": ("fit", "configs/froster_synth.yaml", []),
    "FROSTER w/o residual": ("fit", "configs/froster_synth.yaml", ["--model.init_args.residual", "false"]),
    "FROSTER w/o text distillation": ("fit", "configs/froster_synth.yaml", ["--model.init_args.text_distill", "false"]),
    "FROSTER, zero-padded ends": ("fit", "configs/froster_synth.yaml",
                                  ["--model.init_args.temporal", "neighbour_zeros"]),
}


def other_weight(distill_weight: float | None) -> bool:
    """Whether ``distill_weight`` asks for a lambda other than the shipped config's."""
    return distill_weight is not None and distill_weight != CONFIG_DISTILL_WEIGHT


def run_dir(method: str, seed: int, distill_weight: float | None = None, init_offset: int = 0) -> Path:
    """Where a run lives: the main table's directly under the method's folder, runs at another
    lambda or initial seed under ``lambda<w>/``, ``init+<k>/`` or ``lambda<w>_init+<k>/``."""
    name = method.replace(" ", "_").replace("/", "").replace(",", "")
    variant = []
    if other_weight(distill_weight):
        variant.append(f"lambda{distill_weight:g}")
    if init_offset:
        variant.append(f"init+{init_offset}")
    return RUNS.joinpath(*(["_".join(variant)] if variant else []), name, f"s{seed}")


def run_one(method: str, seed: int, world: str, distill_weight: float | None = None, init_offset: int = 0) -> dict:
    """One run on split seed ``seed``, initialised with ``seed + init_offset`` (see :func:`run_dir`)."""
    command, config, extra = METHODS[method]
    out = run_dir(method, seed, distill_weight, init_offset)
    if other_weight(distill_weight):
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


def novel_evaluation(world: str):
    """The novel half of ``world``'s evaluation videos, as the shipped config loads them:
    (a loader of batches, the novel class names)."""
    from vlkd.data import SynthActionsDataModule

    data = SynthActionsDataModule(**{**FROSTER_CONFIG["data"]["init_args"], "root": world, "num_workers": 0})
    data.setup("test")
    index = [eval_set.group for eval_set in data.eval_sets].index("novel")
    return data.test_dataloader()[index], data.eval_sets[index].class_names


def novel_videos(loader):
    """(B * views, T, C, H, W) clips of every batch of ``loader``."""
    for batch in loader:
        yield batch["video"].flatten(0, 1)


@torch.inference_mode()
def teacher_agreement(run: Path, world: str) -> dict[str, float]:
    """How far training moved a run's student (``averaged.ckpt``) from the frozen teacher, on the novel half.

    ``novel_frame_cos``: mean cosine between the student's and the teacher's embeddings of
    the same frames of every novel evaluation video; ``novel_text_cos``: the same for the
    prompt-ensembled novel class embeddings. The teacher itself scores 1.
    """
    from vlkd.methods.checkpoints import load_video_method

    (checkpoint,) = run.rglob("averaged.ckpt")
    method = load_video_method(checkpoint)
    teacher = getattr(method, "teacher", None)
    if teacher is None:  # FineTuneCLIP keeps none: rebuild the one it started from
        teacher = method.initial_weights.build()
    loader, names = novel_evaluation(world)
    frame_cos = [F.cosine_similarity(method.student.encode_video(video, normalize=True), teacher.encode_frames(video),
                                     dim=-1).flatten() for video in novel_videos(loader)]
    text_cos = F.cosine_similarity(method.class_embeddings(names), teacher.encode_text(names, method.templates), dim=-1)
    return {"novel_frame_cos": torch.cat(frame_cos).mean().item(), "novel_text_cos": text_cos.mean().item()}


@torch.inference_mode()
def projector_diagnostics(run: Path, world: str) -> dict[str, float]:
    """What the visual residual projector does at the end of training (``last.ckpt``: the student
    and the projector it was trained with), on the novel evaluation frames.

    ``projector_shift``: mean distance ``|P(f) - f|`` of the unit-length student frame embeddings;
    ``projector_share``: the fraction of the visual distillation loss (``1 - cos`` to the teacher)
    that the projector removes. Empty for runs without a visual projector.
    """
    from vlkd.methods.checkpoints import load_video_method

    (checkpoint,) = run.rglob("last.ckpt")
    method = load_video_method(checkpoint)
    projector = getattr(method, "visual_projector", None)
    if projector is None:
        return {}
    loader, _ = novel_evaluation(world)
    shift, loss, projected_loss = [], [], []
    for video in novel_videos(loader):
        student, teacher = method.student.encode_video(video, normalize=True), method.teacher.encode_frames(video)
        moved = projector(student)
        shift.append((moved - student).norm(dim=-1).flatten())
        loss.append((1 - F.cosine_similarity(student, teacher, dim=-1)).flatten())
        projected_loss.append((1 - F.cosine_similarity(moved, teacher, dim=-1)).flatten())
    loss, projected_loss = torch.cat(loss).mean().item(), torch.cat(projected_loss).mean().item()
    return {"projector_shift": torch.cat(shift).mean().item(), "projector_share": 1 - projected_loss / loss}


def with_diagnostics(method: str, seed: int, world: str, distill_weight: float | None = None,
                     init_offset: int = 0) -> dict:
    """The run's summary with :func:`teacher_agreement` and, where the run has a visual projector,
    :func:`projector_diagnostics` added (computed once, stored with it)."""
    summary = run_one(method, seed, world, distill_weight, init_offset)
    run = run_dir(method, seed, distill_weight, init_offset)
    changed = False
    if "novel_frame_cos" not in summary:
        summary.update(teacher_agreement(run, world) if METHODS[method][0] == "fit"
                       else {"novel_frame_cos": 1.0, "novel_text_cos": 1.0})
        changed = True
    if "projector_share" not in summary and METHODS[method][0] == "fit":
        summary.update(projector_diagnostics(run, world) or {"projector_shift": None, "projector_share": None})
        changed = True
    if changed:
        (run / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


RESIDUAL_PAIR = ("FROSTER", "FROSTER w/o residual")


def add_paired_difference(runs: list[dict], reference: list[dict], key: str) -> None:
    """Store each run's HM minus the reference run's on the same seed under ``key``.

    Paired by seed: both runs share a few-shot list and an initial state, so the
    difference cancels what the seed does to every method alike.
    """
    for run, other in zip(runs, reference, strict=True):
        run[key] = run["hm"] - other["hm"]


def three_decimals(rows: list[dict], columns: tuple[str, ...]) -> None:
    """Format ``columns`` of ``rows`` (mean ± std pairs) with three decimals: cosines near 1
    and the projector's small figures need them."""
    for row in rows:
        for column in columns:
            if column in row:
                row[column] = f"{row[column].mean:.3f} ± {row[column].std:.3f}"


def residual_pair(seeds: list[int], world: str, distill_weight: float | None = None,
                  init_offset: int = 0) -> tuple[list[dict], list[dict]]:
    """FROSTER's and the direct ablation's runs on ``seeds``, each with ``direct_minus_froster``
    (the HM difference on the same split seed and initial seed)."""
    froster, direct = ([with_diagnostics(m, seed, world, distill_weight, init_offset) for seed in seeds]
                       for m in RESIDUAL_PAIR)
    for runs in (froster, direct):
        add_paired_difference(runs, froster, "direct_minus_froster")
    return froster, direct


def distill_weight_sweep(weights: list[float], seeds: list[int], world: str) -> None:
    """FROSTER against direct distillation at several lambdas: the table behind the README's sweep."""
    columns = ["base", "novel", "hm", "direct_minus_froster", "base_temporal", "novel_temporal", "cross_dataset",
               "projector_share"]
    runs, rows = {}, []
    for weight in sorted({CONFIG_DISTILL_WEIGHT, *weights}):
        for method, method_runs in zip(RESIDUAL_PAIR, residual_pair(seeds, world, weight)):
            runs[f"{method}, lambda {weight:g}"] = method_runs
            summary = summarize_seeds(method_runs)
            rows.append({"method": method, "lambda": f"{weight:g}", **{c: summary[c] for c in columns if c in summary}})
    three_decimals(rows, ("projector_share",))
    write_results({"seeds": seeds, "runs": runs}, RESULTS, name="froster_synth_lambda")
    table = markdown_table(rows, ["method", "lambda", *columns])
    header = (f"# FROSTER vs distillation without the residual projector, by lambda (flat world, seeds {seeds}, "
              "mean ± std; top-1 %)\n\n"
              "lambda: the distillation weight in L = CE + lambda * (L_v + L_t).\n"
              "direct_minus_froster: the HM of the row minus FROSTER's at the same lambda and seed.\n"
              "projector_share: the fraction of the visual distillation loss the residual projector removes "
              "(last-epoch weights, novel evaluation frames).\n\n")
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
    per_method = {m: [with_diagnostics(m, seed, args.world) for seed in args.seeds] for m in args.methods}
    columns = ["base", "novel", "hm", "base_static", "base_temporal", "novel_static", "novel_temporal",
               "cross_dataset", "novel_frame_cos", "novel_text_cos", "projector_shift", "projector_share", "minutes"]
    if "FROSTER" in per_method:
        for runs in per_method.values():
            add_paired_difference(runs, per_method["FROSTER"], "hm_minus_froster")
        columns.insert(3, "hm_minus_froster")
    summary = {m: summarize_seeds(runs) for m, runs in per_method.items()}
    rows = [{"method": m, **{c: summary[m][c] for c in columns if c in summary[m]}} for m in args.methods]
    three_decimals(rows, ("novel_frame_cos", "novel_text_cos", "projector_shift", "projector_share"))
    write_results({"seeds": args.seeds, "runs": per_method, "mean_std": summary}, RESULTS, name="froster_synth")
    table = markdown_table(rows, ["method", *columns])
    header = (f"# FROSTER on SynthActions (flat world, seeds {args.seeds}, mean ± std; top-1 %)\n\n"
              "static / temporal: top-1 over the videos of single-frame classes and of direction twins "
              "(each still classified among all classes of its half).\n"
              "cross_dataset: zero-shot top-1 on the textured world's 48 classes (12 not in the flat world).\n"
              "hm_minus_froster: the row's HM minus FROSTER's on the same seed, mean ± std over seeds.\n"
              "novel_frame_cos / novel_text_cos: mean cosine of the student's embeddings of the novel "
              "evaluation frames / novel class prompts to the frozen teacher's (1 = unchanged).\n"
              "projector_shift / projector_share: how far the visual residual projector moves the unit-length "
              "frame embeddings, and the fraction of the visual distillation loss it removes (last-epoch weights, "
              "novel evaluation frames; rows with a projector only).\n\n")
    (RESULTS / "froster_synth.md").write_text(header + table)
    print(table)


if __name__ == "__main__":
    main()

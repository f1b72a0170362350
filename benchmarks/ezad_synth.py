"""EZAD on the offline SynthDetection world: EZAD against ViLD-style distillation and the base-only detector,
its ablations, the teacher's crop accuracy before and after re-normalisation, and what the region cache saves.

    python benchmarks/ezad_synth.py                                     # every variant, seeds 1-3 (hours on 2 cores)
    python benchmarks/ezad_synth.py --variants ezad vild base_only --seeds 1
    python benchmarks/ezad_synth.py --ablation-seeds 1                  # the ablations on seed 1 only
    python benchmarks/ezad_synth.py --cost-only

Every run is `python -m vlkd fit --config configs/ezad_synth.yaml` with `seed_everything` s and the variant,
so the variants of one seed share the data order, the flips and the detector's initial weights; they differ
only in their losses (and, for no_renorm and vild, in the teacher). The re-normalised teacher and the region
cache are built once (in benchmarks/runs/ezad_synth/work) and shared by every run that uses them. AP is
COCO's (pycocotools) on the world's validation split, in one vocabulary of all 12 names.

Cost (`--cost-only` runs just this): proposal generation per image (the cache build's own timing, per shard),
and detector training steps/s in turns on the same batches: with the region embeddings read from the cache
(`cached`), computed in the step by the teacher for the same boxes (`live`), and with the image's CLIP
proposals also generated in the step (`live_proposals`: what a run without the stage-2 cache pays).

Writes benchmarks/results/ezad_synth.{json,md} and ezad_synth_cost.{json,md}. Finished runs are kept under
benchmarks/runs/ezad_synth/ (delete it to redo them).
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

import torch

from vlkd.eval import markdown_table, summarize_seeds, write_results

HERE = Path(__file__).parent
REPO = HERE.parent
RESULTS = HERE / "results"
RUNS = HERE / "runs" / "ezad_synth"
WORK = RUNS / "work"
CONFIG = REPO / "configs" / "ezad_synth.yaml"
WORLD = REPO / "synth" / "detection"
VARIANTS = ("ezad", "vild", "base_only", "no_renorm", "no_proposals", "no_semantic_regression")
LABELS = {"ezad": "EZAD", "vild": "ViLD-style (raw CLIP on RPN proposals)", "base_only": "base only (text classifier)",
          "no_renorm": "EZAD without re-normalisation", "no_proposals": "EZAD without CLIP proposals",
          "no_semantic_regression": "EZAD without semantic regression"}
ABLATIONS = ("no_renorm", "no_proposals", "no_semantic_regression")
METRICS = ("novel_ap50", "base_ap50", "all_ap50", "novel_ap", "base_ap", "all_ap", "novel_ap50_1000det")


def machine() -> str:
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"


def fit(variant: str, seed: int) -> dict:
    """One run's summary (kept, so a finished run is not run again)."""
    out = RUNS / variant / f"s{seed}"
    done = out / "summary.json"
    if done.is_file():
        return json.loads(done.read_text())
    start = time.perf_counter()
    command = [sys.executable, "-m", "vlkd", "fit", "--config", str(CONFIG), "--seed_everything", str(seed),
               "--data.init_args.root", str(WORLD), "--model.init_args.variant", variant,
               "--model.init_args.work_dir", str(WORK), "--trainer.default_root_dir", str(out),
               "--trainer.enable_progress_bar", "false"]
    # One intra-op thread: on 2 shared cores with 2 loader workers, two threads make this small detector's
    # steps several times slower (measured), not faster.
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    subprocess.run(command, check=True, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    (results,) = sorted(out.rglob("results.json"))[-1:]
    content = json.loads(results.read_text())
    summary = {key: content["metrics"].get(key) for key in METRICS}
    summary["minutes"] = (time.perf_counter() - start) / 60
    if "crop_top1" in content:
        summary["crop_top1"] = content["crop_top1"]
    done.write_text(json.dumps(summary, indent=2))
    return summary


def accuracy_rows(runs: dict, seeds: list[int]) -> list[dict]:
    rows = []
    reference = runs.get("ezad")
    for variant, summaries in runs.items():
        row = {"method": LABELS[variant], "seeds": len(summaries)}
        values = [{k: s[k] for k in METRICS if s.get(k) is not None} for s in summaries]
        # one seed has no spread to show: its values, not "± 0.00"
        row.update(summarize_seeds(values) if len(values) > 1 else values[0])
        row["minutes"] = statistics.mean(s["minutes"] for s in summaries)
        if reference and variant != "ezad":
            row["ezad_minus_this_novel_ap50"] = ", ".join(
                f"{a['novel_ap50'] - b['novel_ap50']:+.2f}" for a, b in zip(reference, summaries))
        rows.append(row)
    return rows


def crop_rows(runs: dict) -> list[dict]:
    """Ground-truth crop top-1 of the teacher before and after re-normalisation (validation crops, all names)."""
    for summaries in runs.values():
        for summary in summaries:
            if "crop_top1" in summary:
                crops = summary["crop_top1"]
                return [{"teacher": when, **{k: crops[when].get(k) for k in ("base", "novel", "all")}}
                        for when in ("before", "after")]
    return []


def cost(steps: int, repeats: int) -> dict:
    """Proposal generation time per image, and training steps/s with cached against in-step region embeddings."""
    import yaml

    from vlkd.cli import build_from_config
    from vlkd.eval.cost import time_round_robin
    from vlkd.teacher.proposals import embed_boxes, generate_proposals

    override = RUNS / "cost_override.yaml"
    override.parent.mkdir(parents=True, exist_ok=True)
    override.write_text(yaml.safe_dump({"data": {"init_args": {"root": str(WORLD), "num_workers": 0}},
                                        "model": {"init_args": {"work_dir": str(WORK)}},
                                        "trainer": {"enable_progress_bar": False}}))
    cli = build_from_config(["--config", str(CONFIG), "--config", str(override)])
    method, datamodule = cli.model, cli.datamodule
    datamodule.prepare_data()
    datamodule.setup("fit")
    folder = method.build_region_cache(datamodule, progress=False)
    shards = [json.loads(p.read_text()) for p in sorted(folder.glob("shard-*.json"))]
    images = sum(entry["samples"][1] - entry["samples"][0] for entry in shards)
    seconds_per_image = sum(entry["seconds"] for entry in shards) / images
    anchors = method.proposal_settings
    datamodule.attach_cache(folder)
    teacher = method.teacher
    method._build_detector(teacher.embed_dim)
    method.train_text = teacher.encode_text(datamodule.base_names, method.templates).float()
    loader = iter(datamodule.train_dataloader())
    batches = [next(loader) for _ in range(steps)]
    optimizer = torch.optim.AdamW(method.detector.parameters(), lr=1e-4)
    crop = method.proposal_settings.embed_crop
    names = datamodule.base_names + datamodule.novel_names
    all_text = teacher.encode_text(names, method.templates).float()
    base = torch.tensor([name in datamodule.base_names for name in names])

    def step(batch: dict, live: bool, proposals: bool = False) -> None:
        distill = batch["distill"]
        if live:  # the same boxes, embedded by the teacher now (what a run without the cache pays)
            distill = []
            for image, regions, target in zip(batch["images"], batch["distill"], batch["targets"]):
                if proposals:  # and the image's CLIP proposals found now, as without any stage-2 cache
                    generate_proposals(teacher, image, all_text, target["boxes"], base, method.proposal_settings)
                distill.append({**regions, "embeddings": embed_boxes(teacher, image, regions["boxes"], crop)})
        method.detector.set_class_embeddings(method.train_text)
        losses = method.detector(batch["images"], [{"boxes": t["boxes"], "labels": t["labels"]}
                                                   for t in batch["targets"]], distill=distill)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()

    method.detector.train()
    for batch in batches[:2]:  # warm-up
        step(batch, False)
        step(batch, True)
        step(batch, True, proposals=True)
    times = time_round_robin({"cached": lambda: [step(b, False) for b in batches],
                              "live": lambda: [step(b, True) for b in batches],
                              "live_proposals": lambda: [step(b, True, proposals=True) for b in batches]},
                             repeats, progress="timing")
    cached, live, live_proposals = (statistics.median(times[k]) / steps for k in ("cached", "live", "live_proposals"))
    regions = statistics.mean(len(b["distill"][i]["boxes"]) for b in batches for i in range(len(b["images"])))
    return {"machine": machine(), "proposal_seconds_per_image": seconds_per_image,
            "cache_images": images, "regions_per_image": regions, "batch_size": datamodule.batch_size,
            "steps_per_second_cached": 1 / cached, "steps_per_second_live": 1 / live, "cached_over_live": live / cached,
            "steps_per_second_live_proposals": 1 / live_proposals, "cached_over_live_proposals": live_proposals / cached,
            "anchor_grid": {"stride": anchors.stride, "sizes": list(anchors.sizes), "ratios": list(anchors.ratios)}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--ablation-seeds", type=int, nargs="+", default=None,
                        help="seeds of the three ablations (default: --seeds), the first ones of --seeds")
    parser.add_argument("--finished-only", action="store_true",
                        help="tabulate the runs already finished (of the given variants and seeds); train nothing")
    parser.add_argument("--cost-only", action="store_true", help="only the cost measurement")
    parser.add_argument("--no-cost", action="store_true", help="no cost measurement")
    parser.add_argument("--cost-steps", type=int, default=5, help="training steps per timed repetition")
    parser.add_argument("--cost-repeats", type=int, default=5, help="timed repetitions")
    args = parser.parse_args()
    os.environ.setdefault("VLKD_OFFLINE", "1")
    from vlkd.data.synthetic.detection import generate_detection

    generate_detection(WORLD)
    if not args.cost_only:
        ablation_seeds = args.ablation_seeds or args.seeds
        if ablation_seeds != args.seeds[:len(ablation_seeds)]:
            parser.error("--ablation-seeds must be the first seeds of --seeds (EZAD is compared seed by seed)")
        runs = {variant: [fit(variant, seed) for seed in (ablation_seeds if variant in ABLATIONS else args.seeds)
                          if not args.finished_only or (RUNS / variant / f"s{seed}" / "summary.json").is_file()]
                for variant in args.variants}
        runs = {variant: summaries for variant, summaries in runs.items() if summaries}
        rows = accuracy_rows(runs, args.seeds)
        crops = crop_rows(runs)
        header = ("# EZAD on SynthDetection\n\nCOCO AP / AP50 (%) on the validation split, one vocabulary of all 12 "
                  f"names; mean ± std over the first `seeds` of seeds {', '.join(map(str, args.seeds))} each row "
                  "ran (a seed is shared by every method: the same data order, flips and initial weights); "
                  "ezad_minus_this: EZAD's novel AP50 minus this row's, seed by seed.\n\n"
                  f"Machine: {machine()}.\n\n")
        crop_table = ("\n## The teacher's ground-truth crop top-1 (%), validation crops among all names\n\n"
                      + markdown_table(crops) if crops else "")
        write_results({"machine": machine(), "rows": rows, "crop_top1": crops, "runs": runs}, RESULTS,
                      name="ezad_synth")
        (RESULTS / "ezad_synth.md").write_text(header + markdown_table(rows) + crop_table)
        print(markdown_table(rows))
    if args.no_cost:
        return
    measured = cost(args.cost_steps, args.cost_repeats)
    write_results(measured, RESULTS, name="ezad_synth_cost")
    print(json.dumps(measured, indent=1))


if __name__ == "__main__":
    main()

"""What a FROSTER training step costs against plain fine-tuning, at real scale.

    python benchmarks/froster_cost.py              # ~10 min on 2 CPU cores
    python benchmarks/froster_cost.py --classes 200 --clips 2

One optimisation step (loss, backward, AdamW update) of each method on the same
batch, ViT-B/16 at 224 px with random weights (cost does not depend on their
values), 8 frames a clip, ``--clips`` clips a step and ``--classes`` training
classes, whose prompts all pass through the student's text tower every step, as
in the paper. Rows:

  fine-tuning                 FineTuneCLIP (ViFi-CLIP): frames independent, cross-entropy only
  FROSTER                     neighbour-frame attention, plus the frozen teacher on the same frames,
                              the teacher's class prompts (cached per template, so free after the
                              first steps) and the two residual projectors
  FROSTER, grad checkpointing the same step, recomputing the blocks in the backward pass
  FROSTER, independent frames temporal="none": what the neighbour attention costs

Columns: seconds per step (median of ``--repeats`` round-robin repetitions after a
warm-up step), GFLOPs per step (``vlkd.eval.cost.count_flops``: forward, backward
and attention included) and the peak tensor memory the step allocates
(``vlkd.eval.cost.peak_memory``: weights and optimiser state, allocated before,
are not counted), each also as a ratio to fine-tuning. Then where the FLOPs go: the
teacher's forward pass on the clip, the neighbour-frame attention, and the student's text
tower over the class prompts (forward and backward). Writes
``benchmarks/results/froster_cost.{json,md}``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
from pathlib import Path

import torch
from tqdm import tqdm

from vlkd.eval import markdown_table, write_results
from vlkd.eval.cost import count_flops, peak_memory, time_round_robin

HERE = Path(__file__).parent
RESULTS = HERE / "results"
FRAMES, SIZE = 8, 224


def build_methods() -> dict:
    """Every row's method, each on its own random ViT-B/16 (the values do not change the cost)."""
    from vlkd.methods import FROSTER, FineTuneCLIP
    from vlkd.teacher import TeacherSpec

    spec = TeacherSpec("ViT-B-16", None)
    return {
        "fine-tuning": FineTuneCLIP(clip=spec),
        "FROSTER": FROSTER(teacher=spec),
        "FROSTER, grad checkpointing": FROSTER(teacher=spec, grad_checkpointing=True),
        "FROSTER, independent frames": FROSTER(teacher=spec, temporal="none"),
    }


def step_fn(method, video: torch.Tensor, labels: torch.Tensor, class_names: list[str]):
    """One optimisation step of ``method`` on the batch, as a closure."""
    method.train()
    optimizer = torch.optim.AdamW(method.parameter_groups(), lr=1e-7)

    def step() -> None:
        loss, _, _ = method.training_loss(video, labels, class_names)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=1, help="clips a step (default 1)")
    parser.add_argument("--classes", type=int, default=50, help="training classes a step (default 50)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("VLKD_OFFLINE", "1")

    generator = torch.Generator().manual_seed(0)
    video = torch.rand(args.clips, FRAMES, 3, SIZE, SIZE, generator=generator)
    labels = torch.randint(args.classes, (args.clips,), generator=generator)
    class_names = [f"action number {i}" for i in range(args.classes)]
    built = build_methods()
    steps = {name: step_fn(method, video, labels, class_names) for name, method in built.items()}

    rows = {}
    for name, step in tqdm(steps.items(), desc="FLOPs and memory"):
        step()  # warm-up: allocates the optimiser state and fills the teacher's prompt cache
        rows[name] = {"flops": count_flops(step), "peak_bytes": peak_memory(step)}
    for name, times in time_round_robin(steps, args.repeats, progress="timing").items():
        rows[name]["times"] = times

    # Where a step's FLOPs go: the parts FROSTER adds and the part both methods share.
    froster, fine_tuning = built["FROSTER"], built["fine-tuning"]
    with torch.no_grad():
        teacher_frames = count_flops(lambda: froster.teacher.encode_frames(video))
    prompts = fine_tuning.prompts(class_names, fine_tuning.sample_template())
    text_tower = count_flops(lambda: fine_tuning.encode_prompts(prompts).sum().backward())
    fine_tuning.zero_grad(set_to_none=True)
    components = {
        "teacher_frames_gflops": teacher_frames / 1e9,
        "neighbour_attention_gflops": (rows["FROSTER"]["flops"] - rows["FROSTER, independent frames"]["flops"]) / 1e9,
        "student_text_tower_gflops": text_tower / 1e9,
    }

    base = rows["fine-tuning"]
    base_seconds = statistics.median(base["times"])
    table = []
    for name, row in rows.items():
        seconds = statistics.median(row["times"])
        table.append({
            "method": name,
            "seconds_per_step": seconds,
            "time_vs_fine_tuning": seconds / base_seconds,
            "gflops_per_step": row["flops"] / 1e9,
            "flops_vs_fine_tuning": row["flops"] / base["flops"],
            "peak_memory_mb": row["peak_bytes"] / 2**20,
            "memory_vs_fine_tuning": row["peak_bytes"] / base["peak_bytes"],
        })
    setup = (f"ViT-B/16, {SIZE} px, random weights; {args.clips} clip(s) of {FRAMES} frames and "
             f"{args.classes} training classes a step; {args.threads} torch threads")
    results = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "setup": setup,
        "repeats": args.repeats,
        "rows": table,
        "components": components,
    }
    write_results(results, RESULTS, name="froster_cost")
    markdown = markdown_table(table)
    (RESULTS / "froster_cost.md").write_text(
        f"# The cost of one training step: FROSTER against fine-tuning\n\n{setup}; {results['machine']}. "
        "Seconds: median of the repeats; GFLOPs: forward, backward and attention; memory: peak tensor memory "
        "the step allocates (weights and optimiser state not counted).\n\n" + markdown
        + "\nWhere the FLOPs go (GFLOPs a step): the frozen teacher on the clip's frames "
        f"{components['teacher_frames_gflops']:.0f}, the neighbour-frame attention "
        f"{components['neighbour_attention_gflops']:.0f} (FROSTER minus FROSTER with independent frames), "
        f"the student's text tower over the {args.classes} class prompts, forward and backward, "
        f"{components['student_text_tower_gflops']:.0f} (both methods).\n"
    )
    print(markdown, components)


if __name__ == "__main__":
    main()

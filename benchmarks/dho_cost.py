"""What DHO's student saves against its teacher, and what a teacher cache saves a DHO training step.

    python benchmarks/dho_cost.py                     # ~15 min on 2 CPU cores
    python benchmarks/dho_cost.py --pairs offline resnet

Three student / teacher pairs, random weights (cost does not depend on their values)
except the offline pair's shipped teacher:

  vit      ViT-B/16 CLIP image tower student (DHO's ImageNet student), ViT-L/14 CLIP teacher, 224 px, 1,000 classes
  resnet   timm ResNet-18 student (DHO's few-shot student), CLIP RN50 teacher, 224 px, 100 classes
  offline  timm test_resnet student, the shipped vlkd-synth-vit teacher, 64 px, 42 classes (configs/dho_synth.yaml)

Per pair: parameters (the student with both heads; the teacher's image tower, which is
what runs per image), GFLOPs per image (``vlkd.eval.cost.count_flops``) and images/s
of inference (the student's combined heads; the teacher's zero-shot logits), each
student / teacher. Then one DHO optimisation step (``DHO.training_step``, backward,
AdamW) on ``--batch`` labelled plus ``--batch`` unlabelled images, with the live
teacher and with the teacher's embeddings read from the batch as a ``vlkd cache``
supplies them: steps/s and GFLOPs per step, cached / live. Times are medians of
``--repeats`` round-robin repetitions after a warm-up. Writes
``benchmarks/results/dho_cost.{json,md}``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import warnings
from pathlib import Path

import torch

from vlkd.eval import markdown_table, write_results
from vlkd.eval.cost import count_flops, time_round_robin

HERE = Path(__file__).parent
RESULTS = HERE / "results"

#: pair -> (student, teacher name, teacher tag, classes, label)
PAIRS = {
    "vit": ("clip:ViT-B-16", "ViT-L-14", None, 1000, "ViT-B/16 student, ViT-L/14 teacher"),
    "resnet": ("resnet18", "RN50", None, 100, "ResNet-18 student, RN50 teacher"),
    "offline": ("test_resnet", "vlkd-synth-vit", "synthactions", 42, "test_resnet student, vlkd-synth-vit teacher"),
}


def build(pair: str):
    from vlkd.methods.dho import DHO
    from vlkd.teacher import TeacherSpec

    student, teacher, tag, classes, _ = PAIRS[pair]
    method = DHO(teacher=TeacherSpec(teacher, tag), student=student,
                 student_pretrained=None if student.startswith("clip:") else False, templates="photo")
    method.build_student([f"class number {i}" for i in range(classes)])
    return method


def parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def image_tower(method) -> torch.nn.Module:
    model = method.teacher.adapter.model
    return getattr(model, "visual", model)


def measure(pair: str, batch: int, repeats: int) -> dict:
    method = build(pair)
    size = method.teacher.image_size
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(batch, 3, size, size, generator=generator)
    unlabelled = torch.rand(batch, 3, size, size, generator=generator)
    labels = torch.randint(len(method.class_names), (batch,), generator=generator)
    student, teacher = method.student, method.teacher

    # -- inference: one image's FLOPs, images/s on a batch (each call sets the mode it needs) ----
    @torch.no_grad()
    def student_inference():
        student.eval()
        student.predict_proba(images)

    @torch.no_grad()
    def teacher_inference():
        method.teacher_logits(images)

    # -- training: live teacher against cached embeddings ----------------------------------
    with torch.no_grad():
        cached = method.teacher_targets({"image": torch.cat([images, unlabelled])})["image_embedding"]
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-7)

    def batch_of(with_cache: bool) -> dict:
        parts = {"labelled": {"image": images, "label": labels, "skipped": []},
                 "unlabelled": {"image": unlabelled, "skipped": []}}
        if with_cache:
            parts["labelled"]["teacher"] = {"image_embedding": cached[:batch]}
            parts["unlabelled"]["teacher"] = {"image_embedding": cached[batch:]}
        return parts

    def step_fn(with_cache: bool):
        data = batch_of(with_cache)

        def step() -> None:
            student.train()
            method.training_step(data, 0).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        return step

    calls = {"student_inference": student_inference, "teacher_inference": teacher_inference,
             "step_live": step_fn(False), "step_cached": step_fn(True)}
    for call in calls.values():
        call()  # warm-up (optimiser state, the teacher's class-text cache)
    with torch.no_grad():
        student.eval()  # as in inference
        student_flops = count_flops(lambda: student.predict_proba(images[:1]))
        teacher_flops = count_flops(lambda: method.teacher_logits(images[:1]))
    step_flops = {name: count_flops(calls[name]) for name in ("step_live", "step_cached")}
    times = {name: statistics.median(values)
             for name, values in time_round_robin(calls, repeats, progress=f"{pair}: timing").items()}
    return {
        "pair": PAIRS[pair][4],
        "image_size": size,
        "classes": len(method.class_names),
        "student_params_m": parameters(student) / 1e6,
        "teacher_image_params_m": parameters(image_tower(method)) / 1e6,
        "student_gflops_per_image": student_flops / 1e9,
        "teacher_gflops_per_image": teacher_flops / 1e9,
        "student_images_per_s": batch / times["student_inference"],
        "teacher_images_per_s": batch / times["teacher_inference"],
        "student_speedup": times["teacher_inference"] / times["student_inference"],
        "live_steps_per_s": 1 / times["step_live"],
        "cached_steps_per_s": 1 / times["step_cached"],
        "cached_speedup": times["step_live"] / times["step_cached"],
        "live_gflops_per_step": step_flops["step_live"] / 1e9,
        "cached_gflops_per_step": step_flops["step_cached"] / 1e9,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", nargs="+", choices=sorted(PAIRS), default=list(PAIRS))
    parser.add_argument("--batch", type=int, default=4, help="labelled (and unlabelled) images a step (default 4)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("VLKD_OFFLINE", "1")
    warnings.filterwarnings("ignore", message=r".*self\.log\(\)")  # training_step outside a Trainer logs nothing

    torch.manual_seed(0)
    rows = [measure(pair, args.batch, args.repeats) for pair in args.pairs]
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"
    setup = (f"{args.batch} labelled + {args.batch} unlabelled images a training step, {args.batch} images an "
             f"inference batch; {args.threads} torch threads; median of {args.repeats} round-robin repeats")
    write_results({"machine": machine, "setup": setup, "rows": rows}, RESULTS, name="dho_cost")
    markdown = markdown_table(rows)
    (RESULTS / "dho_cost.md").write_text(
        "# DHO: the student against its teacher, and the cached teacher against the live one\n\n"
        f"{setup}; {machine}. Parameters in millions (the teacher: its image tower); GFLOPs per image of "
        "inference (student: both heads combined; teacher: zero-shot logits); a training step: DHO's loss on "
        "both batches, backward and AdamW, with the live teacher or with its embeddings from a cache.\n\n"
        + markdown)
    print(markdown)


if __name__ == "__main__":
    main()

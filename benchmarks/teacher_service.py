"""The teacher service: are its answers the teacher's, what does batching buy, and what do a server and a
cache do to FROSTER's training.

    python benchmarks/teacher_service.py                        # every part, ~90 min on 2 CPU cores
    python benchmarks/teacher_service.py --parts batching steps

Parts (each writes its table to benchmarks/results/teacher_service_<part>.{json,md}):

  equality  cosine between the in-process teacher's embeddings and those of RemoteTeacher (float16 and
            uint8 pixels) and of a `vlkd cache` (the stored view, replayed), per row, on SynthActions frames
  batching  16 concurrent clients, each request 1-8 images: images/s and p50 / p99 request latency with
            `--max-batch 64` against `--max-batch 1`, for the shipped teacher and ViT-B/16 (random weights,
            224 px: cost does not depend on the values)
  steps     seconds per FROSTER training step (loss, backward, AdamW) on the same batch with the live
            in-process teacher, cached targets and the remote teacher (SynthActions config), and live
            against cached at the ViT-B/16 setting of benchmarks/froster_cost.py, with the teacher's own
            forward time
  runs      FROSTER on SynthActions s1..s3 (the main table's command) with the in-process teacher, with
            RemoteTeacher (teacher_service.url) and with teacher_cache (K = 8 views, one per epoch, and
            K = 4), mean ± std and the paired per-seed HM difference to the in-process run

One Ray instance (2 CPUs) holds the servers; the training runs are `python -m vlkd fit` processes.
Finished runs and caches are kept under benchmarks/runs/teacher_service/ (delete it to redo them).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import requests
import torch
import torch.nn.functional as F
from tqdm import tqdm

from vlkd.eval import markdown_table, summarize_seeds, write_results

HERE = Path(__file__).parent
REPO = HERE.parent
RESULTS = HERE / "results"
RUNS = HERE / "runs" / "teacher_service"
SHIPPED = ("vlkd-synth-vit", "synthactions")
CONFIG = REPO / "configs" / "froster_synth.yaml"
CROSS = ["--data.init_args.zero_shot_styles", "[textured]"]
PARTS = ("equality", "batching", "steps", "runs")


def machine() -> str:
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"


# --------------------------------------------------------------------------- servers


class Servers:
    """One local Ray instance with a Serve proxy on loopback; applications deployed and removed by name."""

    def __init__(self) -> None:
        from ray import serve

        from vlkd.teacher.server import start_ray

        start_ray(num_cpus=os.cpu_count(), object_store_mb=256)
        self.port = 8000 + random.Random(os.getpid()).randrange(1000)
        serve.start(http_options={"host": "127.0.0.1", "port": self.port})

    @contextmanager
    def app(self, name: str, **config):
        from ray import serve

        from vlkd.teacher.server import ServeConfig, build_application, wait_until_ready

        serve.run(build_application(ServeConfig(**config), replica_cpus=0), name=name, route_prefix=f"/{name}",
                  blocking=False)
        url = f"http://127.0.0.1:{self.port}/{name}"
        wait_until_ready(url)
        try:
            yield url
        finally:
            serve.delete(name)


# --------------------------------------------------------------------------- equality


def synth_frames(count_clips: int = 32) -> torch.Tensor:
    """(count_clips * 8, 3, 64, 64) frames of the flat world's novel evaluation clips."""
    from vlkd.data import SynthActionsDataModule

    data = SynthActionsDataModule(root="synth/flat", num_workers=0, eval_batch_size=count_clips, sampling="dense",
                                  stride=2)
    data.prepare_data()
    data.setup("test")
    batch = next(iter(data.test_dataloader()[1]))
    return batch["video"].flatten(0, 2)


def equality(servers: Servers) -> list[dict]:
    from vlkd import create_teacher
    from vlkd.data.datasets import ClipView
    from vlkd.teacher import RemoteTeacher
    from vlkd.teacher.cache import TeacherCache

    teacher = create_teacher(*SHIPPED)
    frames = synth_frames()
    expected = teacher.encode_images(frames)
    rows = []
    with servers.app("equality", teacher=SHIPPED[0], pretrained=SHIPPED[1]) as url:
        for transport in ("float16", "uint8"):
            remote = RemoteTeacher(url, transport=transport, expect=teacher.identity)
            cosine = F.cosine_similarity(remote.encode_images(frames), expected, dim=-1)
            rows.append(cosine_row(f"RemoteTeacher, {transport} pixels", cosine))
    folder = build_cache(1)
    cache = TeacherCache(folder)
    data = froster_data(1)
    cosines = []
    for sample in tqdm(range(cache.num_samples), desc="replaying the cache", leave=False):
        for view in range(cache.views):
            pixels = data.train_dataset.replay_view(sample, ClipView.from_tensors(cache.view(sample, view)))
            stored = cache.targets(sample, view)["frames"].float()
            cosines.append(F.cosine_similarity(stored, teacher.encode_frames(pixels[None])[0], dim=-1))
    rows.append(cosine_row(f"vlkd cache (float16, K = {cache.views}), replayed views", torch.cat(cosines)))
    return rows


def cosine_row(form: str, cosine: torch.Tensor) -> dict:
    """The table row of per-row cosines: how many, the smallest, and 1 - the smallest (too small for 6 digits)."""
    return {"form": form, "rows": len(cosine), "min_cosine": cosine.min().item(),
            "max_1_minus_cosine": f"{(1 - cosine.double()).max().item():.1e}"}


# --------------------------------------------------------------------------- batching


def load_test(url: str, size: int, clients: int, requests_per_client: int) -> dict:
    """``clients`` threads, each sending ``requests_per_client`` requests of 1-8 uint8 images: throughput, latency."""
    from vlkd.teacher.wire import NPY, write_npy

    latencies, images_sent, errors = [], [0] * clients, []
    bodies = {count: write_npy(np.random.default_rng(count).integers(0, 256, (count, size, size, 3), np.uint8))
              for count in range(1, 9)}
    start_line = threading.Barrier(clients + 1)

    def client(index: int) -> None:
        rng = random.Random(index)
        session = requests.Session()
        start_line.wait()
        for _ in range(requests_per_client):
            count = rng.randint(1, 8)
            sent = time.perf_counter()
            response = session.post(f"{url}/v1/embed/images", data=bodies[count],
                                    headers={"Content-Type": NPY, "Accept": NPY}, timeout=600)
            latencies.append(time.perf_counter() - sent)
            if response.status_code != 200:
                errors.append(response.status_code)
            images_sent[index] += count

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    start_line.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    stats = requests.get(f"{url}/v1/stats", timeout=30).json()
    latencies_ms = np.array(latencies) * 1000
    return {"images_per_s": sum(images_sent) / seconds, "p50_ms": float(np.percentile(latencies_ms, 50)),
            "p99_ms": float(np.percentile(latencies_ms, 99)), "requests": len(latencies), "errors": len(errors),
            "images_per_pass": stats["images"] / max(1, stats["forward_passes"])}


def request_ceiling(url: str, clients: int, requests_per_client: int = 40) -> float:
    """Requests per second of ``clients`` threads asking ``GET /health``: what HTTP and the Serve proxy cost
    alone, the ceiling of any request rate on this machine."""
    def client() -> None:
        session = requests.Session()
        for _ in range(requests_per_client):
            session.get(f"{url}/health", timeout=60)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return clients * requests_per_client / (time.perf_counter() - started)


def batching(servers: Servers, clients: int = 16) -> list[dict]:
    rows = []
    settings = [("shipped teacher (64 px)", SHIPPED, 64, 60), ("ViT-B/16, random weights (224 px)", ("ViT-B-16", None),
                                                              224, 3)]
    # (max_batch, batch_wait_ms): no batching, the default wait, and a longer one (fewer, fuller passes).
    servings = [(1, 5.0), (64, 5.0), (64, 20.0)]
    for label, (name, tag), size, per_client in settings:
        measured = {}
        for max_batch, wait in servings:
            with servers.app(f"batch{max_batch}_{wait:g}", teacher=name, pretrained=tag, max_batch=max_batch,
                             batch_wait_ms=wait) as url:
                load_test(url, size, 4, 2)  # warm-up
                measured[max_batch, wait] = load_test(url, size, clients, per_client)
                measured[max_batch, wait]["health_requests_per_s"] = request_ceiling(url, clients)
        baseline = measured[servings[0]]["images_per_s"]
        for (max_batch, wait), row in measured.items():
            rows.append({"teacher": label, "max_batch": max_batch, "batch_wait_ms": wait, **row,
                         "throughput_vs_max_batch_1": row["images_per_s"] / baseline})
    return rows


# --------------------------------------------------------------------------- steps


def step_fn(method, video, labels, class_names, targets=None):
    """One optimisation step of ``method`` on the batch, as a closure (as in froster_cost.py)."""
    method.train()
    optimizer = torch.optim.AdamW(method.parameter_groups(), lr=1e-7)

    def step() -> None:
        loss, _, _ = method.training_loss(video, labels, class_names, targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def time_steps(steps: dict, repeats: int) -> dict[str, float]:
    """Median seconds of each closure over ``repeats`` round-robin repetitions, after a warm-up call each."""
    for step in steps.values():
        step()
    times = {name: [] for name in steps}
    for _ in tqdm(range(repeats), desc="timing", leave=False):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def steps(servers: Servers, repeats: int) -> list[dict]:
    from vlkd.methods import FROSTER
    from vlkd.teacher import TeacherServiceSpec, TeacherSpec

    rows = []
    data = froster_data(1)
    batch = next(iter(data.train_dataloader()))
    video, labels, names = batch["video"], batch["label"], data.train_classes
    spec = TeacherSpec(*SHIPPED)
    with servers.app("steps", teacher=SHIPPED[0], pretrained=SHIPPED[1]) as url:
        live = FROSTER(teacher=spec)
        remote = FROSTER(teacher=spec, teacher_service=TeacherServiceSpec(url=url))
        targets = live.teacher_targets({"video": video})
        seconds = time_steps({
            "live": step_fn(live, video, labels, names),
            "cached": step_fn(FROSTER(teacher=spec), video, labels, names, targets),
            "remote": step_fn(remote, video, labels, names),
            "teacher forward": lambda: live.teacher.encode_frames(video),
            "remote teacher forward": lambda: remote.teacher.encode_frames(video),
        }, repeats * 10)
    setting = f"SynthActions config: {tuple(video.shape)} clips, {len(names)} classes"
    for name in ("live", "cached", "remote"):
        rows.append({"setting": setting, "teacher": name, "seconds_per_step": seconds[name],
                     "steps_per_s": 1 / seconds[name], "time_vs_live": seconds[name] / seconds["live"],
                     "teacher_forward_s": seconds["remote teacher forward" if name == "remote" else "teacher forward"]
                     if name != "cached" else 0.0})

    frames, size, classes = 8, 224, 50
    generator = torch.Generator().manual_seed(0)
    video = torch.rand(1, frames, 3, size, size, generator=generator)
    labels = torch.randint(classes, (1,), generator=generator)
    names = [f"action number {i}" for i in range(classes)]
    big = TeacherSpec("ViT-B-16", None)
    live = FROSTER(teacher=big)
    targets = live.teacher_targets({"video": video})
    cached = FROSTER(teacher=big)
    seconds = time_steps({"live": step_fn(live, video, labels, names),
                          "cached": step_fn(cached, video, labels, names, targets),
                          "teacher forward": lambda: live.teacher.encode_frames(video)}, repeats)
    setting = f"ViT-B/16, 224 px, random weights: 1 clip of {frames} frames, {classes} classes"
    for name in ("live", "cached"):
        rows.append({"setting": setting, "teacher": name, "seconds_per_step": seconds[name],
                     "steps_per_s": 1 / seconds[name], "time_vs_live": seconds[name] / seconds["live"],
                     "teacher_forward_s": seconds["teacher forward"] if name == "live" else 0.0})
    return rows


# --------------------------------------------------------------------------- runs


def froster_data(seed: int):
    """The shipped FROSTER config's data module on split ``seed``, set up for training."""
    import yaml

    from vlkd.data import SynthActionsDataModule

    settings = yaml.safe_load(CONFIG.read_text())["data"]["init_args"]
    data = SynthActionsDataModule(**{**settings, "seed": seed, "num_workers": 0})
    data.prepare_data()
    data.setup("fit")
    return data


def build_cache(split: int, views: int = 8, init: int = 0) -> Path:
    """The FROSTER config's cache for split ``split``, ``views`` views drawn from seed ``split + init``."""
    folder = RUNS / "caches" / (f"s{split}_k{views}" + (f"_init+{init}" if init else ""))
    if not (folder / "index.json").is_file():
        command = [sys.executable, "-m", "vlkd", "cache", "--config", str(CONFIG), "--data.init_args.seed", str(split),
                   "--seed_everything", str(split + init), "--out", str(folder), "--views", str(views)]
        subprocess.run(command, check=True, cwd=REPO)
    return folder


def fit(variant: str, split: int, extra: list[str], init: int = 0) -> dict:
    """`vlkd fit` of the shipped FROSTER config on split ``split``, seeded ``split + init``, with ``extra``
    options; its summary (kept, so a finished run is not run again)."""
    out = RUNS / (variant + (f"_init+{init}" if init else "")) / f"s{split}"
    done = out / "summary.json"
    if done.is_file():
        return json.loads(done.read_text())
    start = time.perf_counter()
    command = [sys.executable, "-m", "vlkd", "fit", "--config", str(CONFIG), "--seed_everything", str(split + init),
               "--data.init_args.seed", str(split), "--trainer.default_root_dir", str(out),
               "--trainer.enable_progress_bar", "false", *CROSS, *extra]
    subprocess.run(command, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    (results,) = sorted(out.rglob("results.json"))[-1:]
    metrics = json.loads(results.read_text())["metrics"]
    summary = {"base": metrics["base_top1"], "novel": metrics["novel_top1"], "hm": metrics["hm"],
               "cross_dataset": metrics["synth_textured_s1_top1"], "minutes": (time.perf_counter() - start) / 60}
    done.write_text(json.dumps(summary, indent=2))
    return summary


#: The second random stream: the same splits, every run seeded split + OTHER_STREAM.
OTHER_STREAM = 100


def runs(servers: Servers, seeds: list[int]) -> tuple[list[dict], dict]:
    """Each variant paired by split seed with the in-process run of the same random stream. The in-process run
    on another stream is the yardstick: how far FROSTER moves from itself when only the randomness changes."""
    def cache(views: int, init: int = 0) -> list[dict]:
        return [fit(f"cache_k{views}", seed, ["--data.init_args.teacher_cache", str(build_cache(seed, views, init))],
                    init) for seed in seeds]

    in_process = [fit("in_process", seed, []) for seed in seeds]
    in_process_other = [fit("in_process", seed, [], OTHER_STREAM) for seed in seeds]
    with servers.app("runs", teacher=SHIPPED[0], pretrained=SHIPPED[1]) as url:
        remote = [fit("remote", seed, ["--model.init_args.teacher_service.url", url]) for seed in seeds]
    variants = [  # (name, runs, the runs they pair with)
        ("in-process teacher", in_process, in_process),
        (f"in-process teacher, another random stream (seeds + {OTHER_STREAM})", in_process_other, in_process),
        ("RemoteTeacher", remote, in_process),
        ("teacher_cache, K = 8 (a new view every epoch)", cache(8), in_process),
        (f"teacher_cache, K = 8, seeds + {OTHER_STREAM}", cache(8, OTHER_STREAM), in_process_other),
        ("teacher_cache, K = 4 (each view twice)", cache(4), in_process),
    ]
    rows, per_variant = [], {}
    for name, variant_runs, reference in variants:
        for run, other in zip(variant_runs, reference, strict=True):
            run["hm_minus_in_process"] = run["hm"] - other["hm"]
        per_variant[name] = variant_runs
        summary = summarize_seeds(variant_runs)
        rows.append({"teacher": name, **{key: summary[key] for key in
                                         ("base", "novel", "hm", "hm_minus_in_process", "cross_dataset", "minutes")},
                     "per_seed_hm_difference": ", ".join(f"{run['hm_minus_in_process']:+.2f}" for run in variant_runs)})
    return rows, per_variant


# --------------------------------------------------------------------------- main


HEADERS = {
    "equality": "# Teacher service: remote and cached embeddings against the in-process teacher\n\n"
                "Cosine per row between each form's embedding and the in-process teacher's embedding of the same "
                "pixels (shipped teacher; SynthActions frames; for the cache, every stored view of every training "
                "sample of s1, replayed).\n\n",
    "batching": "# Teacher service: dynamic batching\n\n16 concurrent clients, each request 1-8 uint8 images; "
                "images_per_pass: images per forward pass on the server; health_requests_per_s: the same clients "
                "asking GET /health, i.e. what HTTP and the Serve proxy allow with no work at all.\n\n",
    "steps": "# FROSTER step time with the teacher live, cached and remote\n\nSeconds per optimisation step (loss, "
             "backward, AdamW), median of the repeats, the same batch for every row; teacher_forward_s: the "
             "teacher's own encode_frames on that batch (remote: the round trip).\n\n",
    "runs": "# FROSTER on SynthActions with the teacher in-process, remote and cached\n\nflat world, split seeds "
            "s1..s3, mean ± std (top-1 %); hm_minus_in_process: the HM minus the in-process run's on the same split "
            "seed and random stream (for the second in-process row: minus the first's, i.e. what a new random "
            "stream alone does).\n\n",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--repeats", type=int, default=3, help="timing repetitions of the ViT-B/16 steps")
    parser.add_argument("--clients", type=int, default=16)
    args = parser.parse_args()
    os.environ.setdefault("VLKD_OFFLINE", "1")
    os.chdir(REPO)  # the shipped config's world lives in synth/flat under the checkout, as for froster_synth.py
    torch.set_num_threads(os.cpu_count())
    servers = Servers()
    for part in args.parts:
        extra = {}
        if part == "equality":
            rows = equality(servers)
        elif part == "batching":
            rows = batching(servers, args.clients)
        elif part == "steps":
            rows = steps(servers, args.repeats)
        else:
            rows, extra = runs(servers, args.seeds)
        write_results({"machine": machine(), "rows": rows, **({"runs": extra} if extra else {})}, RESULTS,
                      name=f"teacher_service_{part}")
        digits = {"equality": 6, "steps": 3}.get(part, 2)
        table = markdown_table(rows, digits=digits)
        (RESULTS / f"teacher_service_{part}.md").write_text(HEADERS[part] + f"Machine: {machine()}.\n\n" + table)
        print(table)


if __name__ == "__main__":
    main()

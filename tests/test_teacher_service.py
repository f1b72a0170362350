"""The teacher service over loopback: a real Ray Serve server, its client, bad requests, load and faults.

Every test talks HTTP to applications deployed on the session's one Ray instance
(``ray_serve`` in conftest.py), except the `vlkd serve` command tests, which start
the command as a user would, in a process of its own.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback

from tests.conftest import free_port
from vlkd import create_teacher
from vlkd.errors import ConfigError
from vlkd.teacher import RegionCrop, RemoteTeacher, Teacher, TeacherIdentity
from vlkd.teacher.remote import TeacherRequestError, TeacherUnavailableError
from vlkd.teacher.wire import NPY, write_npy

pytest.importorskip("ray.serve", reason="the teacher service tests need vlkd[serve]")

from vlkd.teacher.server import ServeConfig, ServeLimits, build_application, wait_until_ready  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SHIPPED = ("vlkd-synth-vit", "synthactions")
TOKEN = "s3cret-token"


def deploy(ray_serve: str, name: str, config: ServeConfig) -> str:
    """Deploy ``config`` on the shared Serve instance under ``/name``; returns its URL once the teacher is loaded."""
    from ray import serve

    serve.run(build_application(config, replica_cpus=0), name=name, route_prefix=f"/{name}", blocking=False)
    url = f"{ray_serve}/{name}"
    wait_until_ready(url, timeout=180)
    return url


@pytest.fixture(scope="module")
def local():
    """The shipped teacher, in process: what every remote answer is compared with."""
    return create_teacher(*SHIPPED)


@pytest.fixture(scope="module")
def served(ray_serve):
    return deploy(ray_serve, "open", ServeConfig(*SHIPPED, threads=1))


@pytest.fixture(scope="module")
def secured(ray_serve):
    """A server with a token and small limits, so each limit can be hit cheaply."""
    limits = ServeLimits(max_body_mb=0.25, max_images=4, max_side=96, max_texts=3, max_boxes=5)
    return deploy(ray_serve, "secure", ServeConfig(*SHIPPED, threads=1, token=TOKEN, limits=limits))


def _images(count: int, size: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.rand(count, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _min_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return F.cosine_similarity(a, b, dim=-1).min().item()


# --------------------------------------------------------------------------- the interface


def test_health_and_info_name_the_served_teacher(served, local):
    assert requests.get(f"{served}/health", timeout=10).json() == {"status": "ok"}
    info = requests.get(f"{served}/v1/info", timeout=10).json()
    assert TeacherIdentity.from_dict(info) == local.identity
    assert info["api"] == "v1" and info["max_batch"] == 64 and info["limits"]["max_images"] == 256


@pytest.mark.parametrize("transport", ["float16", "uint8"])
def test_remote_embeddings_match_the_in_process_teacher(served, local, transport):
    remote = RemoteTeacher(served, transport=transport, expect=local.identity)
    assert isinstance(remote, Teacher) and isinstance(local, Teacher)
    images = _images(10)
    assert _min_cosine(remote.encode_images(images), local.encode_images(images)) >= 0.9999
    video = _images(6, seed=1).view(2, 3, 3, 64, 64)
    frames = remote.encode_frames(video)
    assert frames.shape == (2, 3, local.embed_dim)
    assert _min_cosine(frames, local.encode_frames(video)) >= 0.9999
    other_size = _images(3, size=80, seed=2)[..., :70]  # resized and centre-cropped on the server, as here
    assert _min_cosine(remote.encode_images(other_size), local.encode_images(other_size)) >= 0.9999
    boxes = torch.tensor([[0, 2, 3, 40, 30], [2, 50, 10, 64, 64], [2, 0, 0, 5, 5]], dtype=torch.float64)
    crop = RegionCrop(enlarge=1.2, min_size=10, square=True)
    assert _min_cosine(remote.encode_regions(images, boxes, crop), local.encode_regions(images, boxes, crop)) >= 0.9999


def test_remote_text_and_zero_shot_logits_match(served, local):
    remote = RemoteTeacher(served, expect=local.identity)
    names = ["red ball on grass", "blue star moving left", "orange box in snow"]
    torch.testing.assert_close(remote.encode_text(names, "video"), local.encode_text(names, "video"))
    torch.testing.assert_close(remote.encode_prompts(["a photo.", "two words"]), local.encode_prompts(["a photo.", "two words"]))
    images = _images(4, seed=3)
    torch.testing.assert_close(remote.zero_shot_logits(images, names), local.zero_shot_logits(images, names),
                               rtol=1e-3, atol=1e-3)
    assert remote.logit_scale == pytest.approx(local.logit_scale) and remote.image_size == local.image_size


def test_large_inputs_are_split_to_fit_the_limits(secured, local):
    remote = RemoteTeacher(secured, token=TOKEN)
    images = _images(11, seed=4)  # max_images 4: three requests
    assert _min_cosine(remote.encode_images(images), local.encode_images(images)) >= 0.9999
    prompts = [f"prompt number {i}" for i in range(7)]  # max_texts 3
    torch.testing.assert_close(remote.encode_prompts(prompts), local.encode_prompts(prompts))


def test_a_different_teacher_is_refused(served, local):
    other = TeacherIdentity(**{**local.identity.to_dict(), "weights_sha256": "0" * 64})
    with pytest.raises(ConfigError, match="weights_sha256"):
        RemoteTeacher(served, expect=other)
    with pytest.raises(ConfigError, match="ViT-B-16"):
        RemoteTeacher(served, expect_name=("ViT-B-16", "openai"))


def test_an_unreachable_server_fails_after_the_retries_with_the_way_back():
    url = f"http://127.0.0.1:{free_port()}"
    start = time.monotonic()
    with pytest.raises(TeacherUnavailableError, match=r"3 tries.*--ckpt_path"):
        RemoteTeacher(url, retries=2, backoff=0.05, timeout=2)
    assert time.monotonic() - start < 10


# --------------------------------------------------------------------------- bad requests


def _npy(array: np.ndarray) -> bytes:
    return write_npy(array)


def _post(url: str, path: str, data=None, content_type: str | None = NPY, params=None, headers=None, **kwargs):
    headers = {**({"Content-Type": content_type} if content_type else {}), **(headers or {})}
    return requests.post(f"{url}{path}", data=data, params=params, headers=headers, timeout=30, **kwargs)


def _pickled_object_array() -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    return buffer.getvalue()


GOOD_IMAGES = np.zeros((1, 64, 64, 3), np.uint8)
TEXT, IMAGES = "/v1/embed/text", "/v1/embed/images"

#: (name, path, body, content type, query, expected status, a word the error must contain)
MALFORMED = [
    ("bad JSON", TEXT, b'{"texts": [', "application/json", None, 400, "JSON"),
    ("text as form", TEXT, b"texts=a", "application/x-www-form-urlencoded", None, 415, "JSON"),
    ("JSON not an object", TEXT, b"[1, 2]", "application/json", None, 422, "object"),
    ("empty text list", TEXT, b'{"texts": []}', "application/json", None, 422, "non-empty"),
    ("a number as text", TEXT, b'{"texts": [1]}', "application/json", None, 422, "texts[0]"),
    ("blank text", TEXT, b'{"texts": ["  "]}', "application/json", None, 422, "texts[0]"),
    ("texts and classes", TEXT, b'{"texts": ["a"], "classes": ["b"]}', "application/json", None, 422, "exactly one"),
    ("unknown field", TEXT, b'{"texts": ["a"], "model": "x"}', "application/json", None, 422, "unknown"),
    ("template without slot", TEXT, b'{"classes": ["a"], "templates": ["a photo"]}', "application/json", None, 422,
     "{}"),
    ("unknown template set", TEXT, b'{"classes": ["a"], "templates": "audio"}', "application/json", None, 422,
     "template set"),
    ("not npy", IMAGES, b"\x89PNG not an array", NPY, None, 400, ".npy"),
    ("npy header promises more", IMAGES, _npy(GOOD_IMAGES)[:-100], NPY, None, 400, "promises"),
    ("pickled objects", IMAGES, _pickled_object_array(), NPY, None, 400, "object"),
    ("float64 pixels", IMAGES, _npy(np.zeros((1, 3, 8, 8))), NPY, None, 422, "dtype"),
    ("uint8 channels first", IMAGES, _npy(np.zeros((1, 3, 8, 8), np.uint8)), NPY, None, 422, "(N, H, W, 3)"),
    ("three dimensions", IMAGES, _npy(np.zeros((8, 8, 3), np.uint8)), NPY, None, 422, "shape"),
    ("NaN pixels", IMAGES, _npy(np.full((1, 3, 8, 8), np.nan, np.float16)), NPY, None, 422, "NaN"),
    ("pixels above 1", IMAGES, _npy(np.full((1, 3, 8, 8), 2, np.float16)), NPY, None, 422, "[0, 1]"),
    ("no images", IMAGES, _npy(np.zeros((0, 8, 8, 3), np.uint8)), NPY, None, 422, "no images"),
    ("images as JSON", IMAGES, b"[[1]]", "application/json", None, 415, "x-npy"),
    ("boxes not JSON", IMAGES, _npy(GOOD_IMAGES), NPY, {"boxes": "[[0, 1"}, 400, "boxes"),
    ("boxes of 4 numbers", IMAGES, _npy(GOOD_IMAGES), NPY, {"boxes": "[[1, 2, 3, 4]]"}, 422, "(M, 5)"),
    ("empty box", IMAGES, _npy(GOOD_IMAGES), NPY, {"boxes": "[[0, 9, 9, 3, 3]]"}, 422, "empty"),
    ("box of another image", IMAGES, _npy(GOOD_IMAGES), NPY, {"boxes": "[[3, 0, 0, 9, 9]]"}, 422, "image 3"),
    ("box outside the image", IMAGES, _npy(GOOD_IMAGES), NPY, {"boxes": "[[0, 70, 70, 90, 90]]"}, 422, "outside"),
    ("NaN box", IMAGES, _npy(GOOD_IMAGES), NPY, {"boxes": "[[0, NaN, 0, 9, 9]]"}, 422, "finite"),
    ("negative enlarge", IMAGES, _npy(GOOD_IMAGES), NPY, {"boxes": "[[0, 0, 0, 9, 9]]", "enlarge": "-1"}, 422,
     "enlarge"),
    ("square as a word", IMAGES, _npy(GOOD_IMAGES), NPY, {"boxes": "[[0, 0, 0, 9, 9]]", "square": "maybe"}, 422,
     "square"),
    ("crop rule without boxes", IMAGES, _npy(GOOD_IMAGES), NPY, {"enlarge": "1.2"}, 422, "boxes"),
    ("broken multipart", IMAGES, b"--xyz\r\nnot a part", "multipart/form-data; boundary=xyz", None, 400, "multipart"),
]


@pytest.mark.parametrize("case", MALFORMED, ids=[case[0] for case in MALFORMED])
def test_malformed_requests_get_a_one_line_4xx(served, case):
    name, path, body, content_type, params, status, word = case
    response = _post(served, path, body, content_type, params)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert word in error and "\n" not in error and len(error) < 400


def test_multipart_requests(served, local):
    images = _images(2, seed=5)
    array = images.to(torch.float16).numpy()
    boxes = [[0, 4, 4, 40, 40], [1, 10, 0, 60, 20]]
    files = {"images": ("images.npy", write_npy(array), NPY), "boxes": (None, json.dumps(boxes)),
             "enlarge": (None, "1.2"), "square": (None, "true")}
    response = requests.post(f"{served}{IMAGES}", files=files, headers={"Accept": NPY}, timeout=30)
    assert response.status_code == 200, response.text
    expected = local.encode_regions(images, torch.tensor(boxes, dtype=torch.float64), RegionCrop(1.2, 1, True))
    got = torch.from_numpy(np.load(io.BytesIO(response.content)))
    assert _min_cosine(got, expected) >= 0.9999
    missing = requests.post(f"{served}{IMAGES}", files={"boxes": (None, "[[0, 0, 0, 4, 4]]")}, timeout=30)
    assert missing.status_code == 422 and "images" in missing.json()["error"]


def test_unknown_paths_and_methods(served):
    assert requests.get(f"{served}/v2/info", timeout=10).status_code == 404
    wrong_method = requests.get(f"{served}{TEXT}", timeout=10)
    assert wrong_method.status_code == 405 and "error" in wrong_method.json()


def test_the_server_stays_healthy_after_every_bad_request(served, local):
    for _, path, body, content_type, params, _, _ in MALFORMED:
        _post(served, path, body, content_type, params)
    assert requests.get(f"{served}/health", timeout=10).status_code == 200
    response = _post(served, TEXT, json.dumps({"texts": ["still here"]}), "application/json",
                     headers={"Accept": NPY})
    got = torch.from_numpy(np.load(io.BytesIO(response.content)))
    torch.testing.assert_close(got, local.encode_prompts(["still here"]))


# --------------------------------------------------------------------------- tokens and limits


def test_the_token_is_required(secured):
    missing = requests.get(f"{secured}/v1/info", timeout=10)
    assert missing.status_code == 401 and missing.headers["WWW-Authenticate"] == "Bearer"
    wrong = requests.get(f"{secured}/v1/info", headers={"Authorization": "Bearer nope"}, timeout=10)
    assert wrong.status_code == 401 and "token" in wrong.json()["error"]
    assert requests.get(f"{secured}/v1/info", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10).ok
    assert requests.get(f"{secured}/health", timeout=10).ok  # health checks need no token
    with pytest.raises(TeacherRequestError, match="needs a token"):
        RemoteTeacher(secured, token="nope")


AUTH = {"Authorization": f"Bearer {TOKEN}"}


def test_limits_are_named_when_exceeded(secured):
    cases = [
        (_npy(np.zeros((1, 96, 96, 3), np.float16).transpose(0, 3, 1, 2).copy()), None, 200, ""),
        (_npy(np.zeros((5, 8, 8, 3), np.uint8)), None, 413, "max_images"),
        (_npy(np.zeros((1, 97, 8, 3), np.uint8)), None, 422, "max_side"),
        (_npy(np.zeros((1, 96, 96, 3), np.float16).transpose(0, 3, 1, 2).copy()).ljust(300_000, b"\0"), None,
         413, "max_body_mb"),
        (_npy(GOOD_IMAGES), {"boxes": json.dumps([[0, 0, 0, 9, 9]] * 6)}, 413, "max_boxes"),
    ]
    for body, params, status, word in cases:
        response = _post(secured, IMAGES, body, NPY, params, headers=AUTH)
        assert response.status_code == status, response.text
        if word:
            assert word in response.json()["error"]
    texts = _post(secured, TEXT, json.dumps({"texts": ["a", "b", "c", "d"]}), "application/json", headers=AUTH)
    assert texts.status_code == 413 and "max_texts" in texts.json()["error"]


def test_a_streamed_body_over_the_limit_is_cut_off(secured):
    """Without a Content-Length the server counts the bytes as they come and stops at the limit."""

    def chunks():
        for _ in range(100):
            yield b"\0" * 10_000

    response = _post(secured, IMAGES, chunks(), NPY, headers=AUTH)
    assert response.status_code == 413 and "max_body_mb" in response.json()["error"]


# --------------------------------------------------------------------------- load and faults


def test_sixteen_concurrent_clients_are_batched_without_errors(ray_serve, local):
    """16 clients x 100 requests of 1-8 images each: every answer right, and requests merged into shared passes."""
    url = deploy(ray_serve, "load", ServeConfig(*SHIPPED, threads=1, max_batch=64, batch_wait_ms=5))
    clients, per_client = 16, 100
    errors, checked = [], []

    def client(index: int) -> None:
        rng = random.Random(index)
        remote = RemoteTeacher(url, retries=0)
        for request in range(per_client):
            images = _images(rng.randint(1, 8), seed=1000 * index + request)
            try:
                embeddings = remote.encode_images(images)
                if embeddings.shape != (len(images), local.embed_dim):
                    errors.append(f"client {index}: shape {tuple(embeddings.shape)}")
                elif request % 25 == 0:
                    checked.append(_min_cosine(embeddings, local.encode_images(images)))
            except Exception as error:  # every failure is one to count
                errors.append(f"client {index}: {error}")

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []
    assert len(checked) == clients * 4 and min(checked) >= 0.9999
    stats = requests.get(f"{url}/v1/stats", timeout=10).json()
    assert stats["requests"] >= clients * per_client
    # Requests hold at most 8 images: a pass over more merged several of them.
    assert stats["max_images_per_pass"] > 8
    assert stats["forward_passes"] < stats["requests"]


def test_a_client_recovers_when_its_replica_is_killed(ray_serve, local):
    """The replica process dies mid-run; Serve starts a new one and the client's retries carry it over."""
    import ray

    url = deploy(ray_serve, "crash", ServeConfig(*SHIPPED, threads=1))
    remote = RemoteTeacher(url, retries=12, backoff=0.25)
    images = _images(4, seed=7)
    expected = local.encode_images(images)
    (replica,) = [actor for actor in ray.util.list_named_actors(all_namespaces=True)
                  if actor["name"].startswith("SERVE_REPLICA::crash#")]
    results, done = [], threading.Event()

    def loop() -> None:
        while not done.is_set():
            results.append(_min_cosine(remote.encode_images(images), expected))

    worker = threading.Thread(target=loop)
    worker.start()
    time.sleep(1.0)
    before = len(results)
    ray.kill(ray.get_actor(replica["name"], namespace=replica["namespace"]), no_restart=True)
    deadline = time.monotonic() + 120
    while len(results) < before + 20 and time.monotonic() < deadline:
        time.sleep(0.2)
    done.set()
    worker.join(timeout=180)
    assert len(results) >= before + 20, "the client did not recover within its retries"
    assert min(results) >= 0.9999
    assert remote.retried > 0  # it did lose the server


# --------------------------------------------------------------------------- the command


def test_serve_refuses_other_interfaces_without_a_token():
    env = {key: value for key, value in os.environ.items() if key != "VLKD_SERVE_TOKEN"}
    result = subprocess.run([sys.executable, "-m", "vlkd", "serve", "--host", "0.0.0.0"], capture_output=True,
                            text=True, timeout=60, env=env)
    assert result.returncode == 2
    assert "without a token" in result.stderr and "--token" in result.stderr and "VLKD_SERVE_TOKEN" in result.stderr


def _start_serve(port: int) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "vlkd", "serve", "--port", str(port), "--num-cpus", "1", "--replica-cpus", "0",
         "--threads", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True)
    return process


def _wait_for_line(process: subprocess.Popen, word: str, timeout: float = 240) -> str:
    lines = []
    deadline = time.monotonic() + timeout
    for line in process.stdout:
        lines.append(line)
        if word in line:
            return line
        if time.monotonic() > deadline:
            break
    raise AssertionError("vlkd serve did not start:\n" + "".join(lines[-30:]))


def _stop(process: subprocess.Popen) -> int:
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)


def test_vlkd_serve_stopped_and_restarted_under_a_running_client(local):
    """The command as a user runs it: serves the shipped teacher with no teacher arguments, stops on SIGTERM,
    and a client that keeps asking gets its answers again once it is restarted on the same port."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = _start_serve(port)
    try:
        line = _wait_for_line(server, "serving")
        assert f"{url} " in line and "vlkd-synth-vit" in line
        remote = RemoteTeacher(url, expect=local.identity, retries=30, backoff=0.5)
        images = _images(3, seed=8)
        assert _min_cosine(remote.encode_images(images), local.encode_images(images)) >= 0.9999
        assert _stop(server) == 0
        answers = []
        client = threading.Thread(target=lambda: answers.append(remote.encode_images(images)))
        client.start()  # retries while there is no server
        time.sleep(1.0)
        server = _start_serve(port)
        _wait_for_line(server, "serving")
        client.join(timeout=240)
        assert answers and _min_cosine(answers[0], local.encode_images(images)) >= 0.9999
        assert remote.retried > 0
    finally:
        if server.poll() is None:
            _stop(server)


# --------------------------------------------------------------------------- training against a server


def _training_overrides(tmp_path: Path, url: str, **service) -> list[str]:
    """The tiny FROSTER run of test_froster, with the shipped teacher (the server's) and its targets from ``url``."""
    import yaml

    from tests.test_froster import tiny_overrides, write_world

    world = write_world(tmp_path / "world")
    overrides = tiny_overrides(REPO / "configs" / "froster_ucf_b2n.yaml", world, tmp_path)
    remote = tmp_path / "remote.yaml"
    remote.write_text(yaml.safe_dump({"model": {"init_args": {
        "teacher": {"name": SHIPPED[0], "pretrained": SHIPPED[1], "precision": "fp32"},
        "teacher_service": {"url": url, **service}}}}))
    return [*overrides, "--config", str(remote), "--trainer.accumulate_grad_batches", "1"]


def test_froster_losses_are_the_same_with_the_remote_teacher(served):
    from vlkd.methods import FROSTER
    from vlkd.teacher import TeacherServiceSpec, TeacherSpec

    spec = TeacherSpec(*SHIPPED, precision="fp32")
    torch.manual_seed(0)
    in_process = FROSTER(teacher=spec)
    torch.manual_seed(0)
    remote = FROSTER(teacher=spec, teacher_service=TeacherServiceSpec(url=served))
    assert isinstance(remote.teacher, RemoteTeacher) and remote.state_dict().keys() == in_process.state_dict().keys()
    video, labels = _images(8, seed=9).view(2, 4, 3, 64, 64), torch.tensor([0, 1])
    _, expected, _ = in_process.training_loss(video, labels, ["red ball on grass", "blue star moving left"])
    _, got, _ = remote.training_loss(video, labels, ["red ball on grass", "blue star moving left"])
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-5)


class LoseTheServer(Callback):
    """Kills the replica of the ``train`` application when the second epoch starts (used by the test below,
    through the config, as a user's callback would be)."""

    checkpoint_hash: str | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        import ray

        if trainer.current_epoch == 1 and LoseTheServer.checkpoint_hash is None:
            (last,) = Path(trainer.log_dir).rglob("last.ckpt")
            LoseTheServer.checkpoint_hash = hashlib.sha256(last.read_bytes()).hexdigest()
            (replica,) = [actor for actor in ray.util.list_named_actors(all_namespaces=True)
                          if actor["name"].startswith("SERVE_REPLICA::train#")]
            ray.kill(ray.get_actor(replica["name"], namespace=replica["namespace"]), no_restart=True)


def test_a_run_that_loses_its_server_stops_with_its_checkpoint_and_resumes(ray_serve, tmp_path, capsys):
    """The replica dies in the second epoch: `vlkd fit` stops with the teacher's error, last.ckpt of the first
    epoch intact and named; once the server is back, the same command with --ckpt_path finishes the run."""
    from vlkd.cli import main

    url = deploy(ray_serve, "train", ServeConfig(*SHIPPED, threads=1))
    # One second per request and no retries: the run notices the loss at once.
    overrides = [*_training_overrides(tmp_path, url, timeout=1.0, retries=0), "--trainer.max_epochs", "3"]
    capsys.readouterr()
    assert main(["fit", *overrides, "--trainer.callbacks+=tests.test_teacher_service.LoseTheServer"]) == 2
    err = capsys.readouterr().err
    (last,) = (tmp_path / "runs").rglob("last.ckpt")
    assert f"the teacher server at {url} did not answer" in err.splitlines()[-1]
    assert f"--ckpt_path {last}" in err
    assert LoseTheServer.checkpoint_hash == hashlib.sha256(last.read_bytes()).hexdigest()
    first = torch.load(last, weights_only=True, map_location="cpu")
    assert first["epoch"] == 0

    wait_until_ready(url, timeout=180)
    assert main(["fit", *overrides, "--ckpt_path", str(last)]) == 0
    resumed = max((tmp_path / "runs").rglob("last.ckpt"), key=lambda path: path.stat().st_mtime)
    state = torch.load(resumed, weights_only=True, map_location="cpu")
    assert resumed.parent != last.parent and state["epoch"] == 2
    assert state["global_step"] == 3 * first["global_step"]
    assert list((tmp_path / "runs").rglob("results.json"))

"""``vlkd serve``: the frozen CLIP teacher as an HTTP service with dynamic batching.

Many training jobs (and GPUs) can share one teacher: each job sends its frames,
crops or prompts, the server merges the images of concurrent requests into one
forward pass, and answers with the embeddings. The HTTP API (v1) is documented
in ``docs/teacher_service.md``; :class:`~vlkd.teacher.remote.RemoteTeacher` is
its client.

Engine: Ray Serve with a FastAPI ingress. Each replica holds one teacher;
``serve.batch`` gathers the images of concurrent requests, up to ``max_batch``
images per forward pass (a request with more is split), waiting at most
``batch_wait_ms`` for company. More replicas (``--replicas``, or autoscaling
between ``--min-replicas`` and ``--max-replicas``) spread over a Ray cluster.

Every request is read, decoded and checked in the ingress before it joins a
batch, so a bad request fails alone, with a 4xx and a one-line
``{"error": ...}``: bodies over the size limit get 413 before they are read
whole, counts and sizes over a limit 413 / 422 naming the limit, malformed
input (bad JSON or ``.npy``, wrong content type, dtype, shape, NaN, empty lists)
400 / 415 / 422. Requests are authorised by ``Authorization: Bearer <token>``
(compared in constant time) when the server has a token; it refuses to bind
anything but a loopback address without one.

:class:`TeacherEngine` is that work without HTTP (decode, check, preprocess,
embed); :class:`TeacherServer` is the Ray Serve deployment around it;
:func:`serve_teacher` starts Ray and Serve, the body of ``vlkd serve``.
"""

import asyncio
import hmac
import ipaddress
import json
import logging
import os
import threading
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

try:
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, Response
    from ray import serve
    from starlette.exceptions import HTTPException as StarletteHTTPException
    from starlette.requests import Request as StarletteRequest
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError(
        f"the teacher server needs the serve extra ({error.name} is missing): pip install 'vlkd[serve]'"
    ) from error

from vlkd import __version__
from vlkd.errors import ConfigError
from vlkd.teacher.prompts import resolve_templates
from vlkd.teacher.regions import RegionCrop
from vlkd.teacher.wire import NPY, WireError, read_npy, write_npy

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
TOKEN_ENV = "VLKD_SERVE_TOKEN"
API_VERSION = "v1"


@dataclass
class ServeLimits:
    """What one request may ask for; each limit is reported in ``/v1/info`` and named when exceeded.

    Args:
        max_body_mb: request body size (413).
        max_images: images in one request (413).
        max_side: image height and width (422).
        max_texts: sentences in one ``texts`` request (413).
        max_prompts: classes x templates in one ``classes`` request (413).
        max_text_chars: characters of one sentence, class name or template (422).
        max_boxes: boxes in one region request (413).
    """

    max_body_mb: float = 64.0
    max_images: int = 256
    max_side: int = 2048
    max_texts: int = 4096
    max_prompts: int = 100_000
    max_text_chars: int = 1000
    max_boxes: int = 4096

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 2**20)


@dataclass
class ServeConfig:
    """Everything a replica needs to build its teacher and answer requests.

    Args:
        teacher: open_clip architecture name or a weights folder.
        pretrained: pretrained tag or checkpoint file (``None``: random weights).
        precision: ``fp32``, ``bf16`` or ``fp16`` (autocast in the towers).
        device: ``cpu``, ``cuda`` or ``auto`` (a GPU when the replica has one).
        max_batch: most images per forward pass; 1 turns batching off.
        batch_wait_ms: how long a forward pass waits for more images once one has arrived.
        token: required bearer token (``None``: none required).
        threads: torch threads per replica (``None``: torch's default).
        limits: per-request limits.
    """

    teacher: str = "vlkd-synth-vit"
    pretrained: str | None = "synthactions"
    precision: str = "fp32"
    device: str = "auto"
    max_batch: int = 64
    batch_wait_ms: float = 5.0
    token: str | None = None
    threads: int | None = None
    limits: ServeLimits = field(default_factory=ServeLimits)

    def __post_init__(self) -> None:
        if not isinstance(self.max_batch, int) or self.max_batch < 1:
            raise ConfigError(f"max_batch must be an integer >= 1, got {self.max_batch!r}")
        if not self.batch_wait_ms >= 0:
            raise ConfigError(f"batch_wait_ms must be >= 0, got {self.batch_wait_ms!r}")


class RequestRefused(Exception):
    """A request the server does not answer with 200: the HTTP ``status`` and a one-line reason."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


# --------------------------------------------------------------------------- the work, without HTTP


class TeacherEngine:
    """Decode and check requests, then embed them with one frozen teacher."""

    def __init__(self, config: ServeConfig):
        from vlkd.teacher.factory import create_teacher

        self.config = config
        self.limits = config.limits
        device = config.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.teacher = create_teacher(config.teacher, config.pretrained, device=device, precision=config.precision)
        self.device = torch.device(device)
        self.identity = self.teacher.identity  # hashes the weights once, before the first request
        self.stats = {"requests": 0, "images": 0, "forward_passes": 0, "max_images_per_pass": 0}
        self._stats_lock = threading.Lock()

    def info(self) -> dict:
        return {
            **self.identity.to_dict(),
            "api": API_VERSION,
            "vlkd_version": __version__,
            "precision": self.config.precision,
            "device": str(self.device),
            "max_batch": self.config.max_batch,
            "limits": {**asdict(self.limits), "max_body_bytes": self.limits.max_body_bytes},
        }

    # -- images -----------------------------------------------------------------------
    def decode_images(self, data: bytes, what: str = "body") -> torch.Tensor:
        """``.npy`` bytes -> (N, 3, H, W) float32 pixels in [0, 1].

        Accepted: uint8 ``(N, H, W, 3)`` (0..255) or float16 ``(N, 3, H, W)`` in [0, 1].
        """
        try:
            array = read_npy(data, what)
        except WireError as error:
            raise RequestRefused(400, str(error)) from None
        if array.dtype == np.uint8:
            layout, channels = "(N, H, W, 3)", array.shape[-1] if array.ndim == 4 else None
        elif array.dtype == np.float16:
            layout, channels = "(N, 3, H, W)", array.shape[1] if array.ndim == 4 else None
        else:
            raise RequestRefused(422, f"{what}: dtype {array.dtype} is not accepted: send uint8 (N, H, W, 3) "
                                 "or float16 (N, 3, H, W) in [0, 1]")
        if array.ndim != 4 or channels != 3:
            raise RequestRefused(422, f"{what}: {array.dtype} images must have shape {layout}, got {array.shape}")
        count = array.shape[0]
        height, width = (array.shape[1:3] if array.dtype == np.uint8 else array.shape[2:4])
        if count == 0:
            raise RequestRefused(422, f"{what}: no images (the first dimension is 0)")
        if count > self.limits.max_images:
            raise RequestRefused(413, f"{what}: {count} images exceed the limit of {self.limits.max_images} "
                                 "per request (max_images): split the request")
        if min(height, width) < 1 or max(height, width) > self.limits.max_side:
            raise RequestRefused(422, f"{what}: images of {height}x{width} pixels: each side must be 1.."
                                 f"{self.limits.max_side} (max_side)")
        if array.dtype == np.uint8:
            return torch.from_numpy(array).permute(0, 3, 1, 2).float().div_(255.0)
        pixels = torch.from_numpy(array).float()
        if not torch.isfinite(pixels).all():
            raise RequestRefused(422, f"{what}: the float16 pixels contain NaN or infinity")
        if pixels.min() < 0 or pixels.max() > 1:
            raise RequestRefused(422, f"{what}: float16 pixels must lie in [0, 1], got "
                                 f"[{pixels.min().item():.3g}, {pixels.max().item():.3g}]")
        return pixels

    def decode_boxes(self, raw: bytes | str, what: str = "boxes") -> torch.Tensor:
        """A JSON list of ``[image, x0, y0, x1, y1]`` rows, or ``.npy`` (M, 5) numbers -> (M, 5) float64."""
        if isinstance(raw, bytes) and raw.startswith(b"\x93NUMPY"):
            try:
                array = read_npy(raw, what)
            except WireError as error:
                raise RequestRefused(400, str(error)) from None
            if array.dtype.kind not in "iuf":
                raise RequestRefused(422, f"{what}: dtype {array.dtype} is not a number type")
            boxes = torch.from_numpy(array.astype(np.float64))
        else:
            try:
                rows = json.loads(raw)
                boxes = torch.tensor(rows, dtype=torch.float64)
            except (ValueError, TypeError, UnicodeDecodeError, RuntimeError):
                raise RequestRefused(400, f"{what}: not a JSON list of [image, x0, y0, x1, y1] rows nor an .npy "
                                     "array") from None
        if boxes.ndim != 2 or boxes.shape[1] != 5 or boxes.shape[0] == 0:
            raise RequestRefused(422, f"{what}: need shape (M, 5) with M >= 1, rows [image, x0, y0, x1, y1]; "
                                 f"got {tuple(boxes.shape)}")
        if boxes.shape[0] > self.limits.max_boxes:
            raise RequestRefused(413, f"{what}: {boxes.shape[0]} boxes exceed the limit of {self.limits.max_boxes} "
                                 "per request (max_boxes)")
        return boxes

    def crop_rule(self, params) -> RegionCrop:
        """The :class:`RegionCrop` named by ``enlarge``, ``min_size`` and ``square`` parameters."""
        try:
            enlarge = float(params.get("enlarge", 1.0))
            min_size = int(params.get("min_size", 1))
            square_text = str(params.get("square", "false")).strip().lower()
            if square_text not in ("true", "false", "1", "0"):
                raise ValueError(f"square must be true or false, got {square_text!r}")
            return RegionCrop(enlarge=enlarge, min_size=min_size, square=square_text in ("true", "1"))
        except (ValueError, TypeError, ConfigError) as error:
            raise RequestRefused(422, f"crop rule: {error}") from None

    def prepare(self, images: torch.Tensor, boxes: torch.Tensor | None = None,
                crop: RegionCrop | None = None) -> torch.Tensor:
        """Pixels (and boxes) -> (N, 3, S, S) normalised model inputs: one per image, or one per box."""
        if boxes is not None:
            try:
                images = self.teacher.region_pixels(images, boxes, crop)
            except ConfigError as error:
                raise RequestRefused(422, f"boxes: {error}") from None
        with torch.no_grad():
            return self.teacher.normalize_pixels(images.to(self.device))

    def embed(self, normalized: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) normalised inputs of one or more requests -> (N, D) on the CPU: one forward pass."""
        embeddings = self.teacher.embed_normalized(normalized.to(self.device)).cpu()
        with self._stats_lock:
            self.stats["forward_passes"] += 1
            self.stats["images"] += len(normalized)
            self.stats["max_images_per_pass"] = max(self.stats["max_images_per_pass"], len(normalized))
        return embeddings

    # -- text -------------------------------------------------------------------------
    def text(self, payload) -> torch.Tensor:
        """``{"texts": [...]}`` or ``{"classes": [...], "templates": name | [...]}`` -> (N, D) on the CPU."""
        if not isinstance(payload, dict):
            raise RequestRefused(422, 'the JSON body must be an object: {"texts": [...]} or '
                                 '{"classes": [...], "templates": ...}')
        unknown = set(payload) - {"texts", "classes", "templates"}
        if unknown:
            raise RequestRefused(422, f"unknown field(s) {sorted(unknown)}: use texts, or classes and templates")
        if ("texts" in payload) == ("classes" in payload):
            raise RequestRefused(422, 'give exactly one of "texts" (sentences) or "classes" (names, with templates)')
        if "texts" in payload:
            if "templates" in payload:
                raise RequestRefused(422, '"templates" goes with "classes", not with "texts"')
            texts = self._strings(payload["texts"], "texts", self.limits.max_texts, "max_texts")
            return self.teacher.encode_prompts(texts).cpu()
        classes = self._strings(payload["classes"], "classes", self.limits.max_prompts, "max_prompts")
        templates = payload.get("templates")
        if templates is not None and not (isinstance(templates, str) or isinstance(templates, list)):
            raise RequestRefused(422, "templates must be a set name (video, photo, none) or a list of templates")
        if isinstance(templates, list):
            self._strings(templates, "templates", 10_000, "templates")
        try:
            resolved = resolve_templates(templates)
        except ConfigError as error:
            raise RequestRefused(422, f"templates: {error}") from None
        prompts = len(classes) * len(resolved)
        if prompts > self.limits.max_prompts:
            raise RequestRefused(413, f"{len(classes)} classes x {len(resolved)} templates = {prompts} prompts exceed "
                                 f"the limit of {self.limits.max_prompts} (max_prompts): split the classes")
        return self.teacher.encode_text(classes, resolved).cpu()

    def _strings(self, value, what: str, limit: int, limit_name: str) -> list[str]:
        if not isinstance(value, list) or not value:
            raise RequestRefused(422, f"{what} must be a non-empty list of strings")
        if len(value) > limit:
            raise RequestRefused(413, f"{len(value)} {what} exceed the limit of {limit} per request ({limit_name})")
        for index, item in enumerate(value):
            if not isinstance(item, str) or not item.strip():
                raise RequestRefused(422, f"{what}[{index}] must be a non-empty string, got {item!r:.60}")
            if len(item) > self.limits.max_text_chars:
                raise RequestRefused(422, f"{what}[{index}] has {len(item)} characters, over the limit of "
                                     f"{self.limits.max_text_chars} (max_text_chars)")
        return value

    def count_request(self) -> None:
        with self._stats_lock:
            self.stats["requests"] += 1


def encode_embeddings(embeddings: torch.Tensor, accept: str) -> tuple[bytes, str]:
    """The response body: ``.npy`` float32 (N, D) when the client accepts it, else JSON."""
    array = embeddings.float().numpy()
    if NPY in accept:
        return write_npy(array), NPY
    return json.dumps({"shape": list(array.shape), "embeddings": array.tolist()}).encode(), "application/json"


# --------------------------------------------------------------------------- HTTP


app = FastAPI(title="vlkd teacher", version=API_VERSION, docs_url=None, redoc_url=None, openapi_url=None)


@app.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, error: StarletteHTTPException):
    # Unknown paths and methods: the same one-line JSON as every other error.
    return JSONResponse({"error": f"{request.method} {request.url.path}: {error.detail}"},
                        status_code=error.status_code)


@app.exception_handler(RequestRefused)
async def _refused(request: Request, error: RequestRefused):
    headers = {"WWW-Authenticate": "Bearer"} if error.status == 401 else None
    return JSONResponse({"error": error.message}, status_code=error.status, headers=headers)


@app.exception_handler(Exception)
async def _server_error(request: Request, error: Exception):
    # Never caused by what a client sends (every request is checked first): a fault of this
    # server, e.g. out of memory. Logged in full; the client gets one line and may retry.
    log.exception("%s %s failed", request.method, request.url.path)
    return JSONResponse({"error": f"internal error ({type(error).__name__}): {' '.join(str(error).split())[:200]}"},
                        status_code=500)


async def read_body(request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.strip().isdigit():
            raise RequestRefused(400, f"Content-Length {declared!r} is not a number")
        if int(declared) > limit:
            raise RequestRefused(413, f"the body has {int(declared)} bytes, over the limit of {limit} "
                                 "(max_body_mb): split the request")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestRefused(413, f"the body exceeds the limit of {limit} bytes (max_body_mb): split the request")
        chunks.append(chunk)
    return b"".join(chunks)


def _media_type(request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def _batch_size(chunks: list) -> int:
    return sum(len(chunk) for chunk in chunks)


# Per-request access logs cost a few percent of a small request's time; errors are still logged.
@serve.deployment(name="teacher", max_ongoing_requests=256, health_check_period_s=5,
                  logging_config={"enable_access_log": False})
@serve.ingress(app)
class TeacherServer:
    """One replica: the teacher, loaded in the background so ``/health`` can say 503 until it is ready."""

    def __init__(self, config: ServeConfig):
        self.config = config
        self.engine: "TeacherEngine | None" = None
        self.load_error: str | None = None
        if config.threads:
            torch.set_num_threads(config.threads)
        self.embed_batch.set_max_batch_size(config.max_batch)
        self.embed_batch.set_batch_wait_timeout_s(config.batch_wait_ms / 1000)
        threading.Thread(target=self._load, daemon=True).start()

    def _load(self) -> None:
        try:
            self.engine = TeacherEngine(self.config)
        except Exception as error:  # reported by /health and `vlkd serve`, which then stops
            self.load_error = f"{type(error).__name__}: {error}"
            log.error("the teacher could not be loaded: %s", self.load_error)

    def _ready(self) -> TeacherEngine:
        if self.engine is None:
            state = f"the teacher failed to load ({self.load_error})" if self.load_error else "the teacher is loading"
            raise RequestRefused(503, state)
        return self.engine

    def _authorize(self, request) -> None:
        token = self.config.token
        if not token:
            return
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
            raise RequestRefused(401, "missing or wrong token: send 'Authorization: Bearer <token>' "
                                 f"(the token the server was started with, --token or {TOKEN_ENV})")

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.005, batch_size_fn=_batch_size)
    async def embed_batch(self, chunks: list[torch.Tensor]) -> list[torch.Tensor]:
        # The forward pass runs in a thread, so the event loop keeps reading and checking
        # the requests that will form the next batch.
        embeddings = await asyncio.to_thread(self.engine.embed, torch.cat(chunks))
        return list(embeddings.split([len(chunk) for chunk in chunks]))

    @app.get("/health")
    async def health(self):
        if self.engine is None:
            state = "failed" if self.load_error else "loading"
            return JSONResponse({"status": state, "error": self.load_error or "the teacher is loading"},
                                status_code=503, headers={"Retry-After": "1"})
        return {"status": "ok"}

    @app.get("/v1/info")
    async def info(self, request: Request):
        self._authorize(request)
        return self._ready().info()

    @app.get("/v1/stats")
    async def stats(self, request: Request):
        self._authorize(request)
        return dict(self._ready().stats)

    @app.post("/v1/embed/text")
    async def embed_text(self, request: Request):
        self._authorize(request)
        engine = self._ready()
        engine.count_request()
        if _media_type(request) != "application/json":
            raise RequestRefused(415, f"send JSON (Content-Type: application/json), not {_media_type(request)!r}")
        body = await read_body(request, engine.limits.max_body_bytes)
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError) as error:
            raise RequestRefused(400, f"the body is not valid JSON ({error})") from None
        embeddings = await asyncio.to_thread(engine.text, payload)
        content, media_type = encode_embeddings(embeddings, request.headers.get("accept", ""))
        return Response(content, media_type=media_type)

    @app.post("/v1/embed/images")
    async def embed_images(self, request: Request):
        self._authorize(request)
        engine = self._ready()
        engine.count_request()
        body = await read_body(request, engine.limits.max_body_bytes)
        params = dict(request.query_params)
        media_type = _media_type(request)
        if media_type == NPY:
            images, boxes = body, params.get("boxes")
        elif media_type == "multipart/form-data":
            images, boxes, params = await self._multipart(request, body, params)
        else:
            raise RequestRefused(415, f"send the images as {NPY} (or multipart/form-data with an 'images' "
                                 f"field), not {media_type!r}")
        pixels = engine.decode_images(images, "images")
        if boxes is not None:
            boxes = engine.decode_boxes(boxes)
            crop = engine.crop_rule(params)
        else:
            if set(params) & {"enlarge", "min_size", "square"}:
                raise RequestRefused(422, "enlarge, min_size and square describe how boxes are cropped: send boxes")
            crop = None
        inputs = await asyncio.to_thread(engine.prepare, pixels, boxes, crop)
        step = self.config.max_batch
        parts = await asyncio.gather(*(self.embed_batch(inputs[i : i + step]) for i in range(0, len(inputs), step)))
        content, out_type = encode_embeddings(torch.cat(parts), request.headers.get("accept", ""))
        return Response(content, media_type=out_type)

    async def _multipart(self, request, body: bytes, params: dict):

        async def replay():
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            form = await StarletteRequest(request.scope, replay).form(max_files=2, max_fields=8)
        except Exception as error:  # starlette raises its own errors for malformed multipart
            raise RequestRefused(400, f"the multipart body cannot be parsed ({' '.join(str(error).split())[:200]})") from None
        fields = {}
        for key, value in form.multi_items():
            fields[key] = await value.read() if hasattr(value, "read") else value
        unknown = set(fields) - {"images", "boxes", "enlarge", "min_size", "square"}
        if unknown:
            raise RequestRefused(422, f"unknown multipart field(s) {sorted(unknown)}: use images, boxes, enlarge, "
                                 "min_size, square")
        if "images" not in fields or isinstance(fields["images"], str):
            raise RequestRefused(422, "the multipart body needs an 'images' file field (an .npy array)")
        boxes = fields.get("boxes", params.get("boxes"))
        return fields["images"], boxes, {**params, **{k: fields[k] for k in ("enlarge", "min_size", "square")
                                                      if k in fields}}



# --------------------------------------------------------------------------- starting it


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_binding(host: str, token: str | None) -> None:
    """Refuse to listen beyond this machine without a token."""
    if not is_loopback(host) and not token:
        raise ConfigError(
            f"refusing to serve the teacher on {host} without a token: anyone who can reach it could use it. "
            f"Set one with --token T or the {TOKEN_ENV} environment variable (clients send "
            "'Authorization: Bearer T'), or bind 127.0.0.1"
        )


def build_application(config: ServeConfig, replicas: int = 1, min_replicas: int | None = None,
                      max_replicas: int | None = None, replica_cpus: float = 1.0, replica_gpus: float = 0.0):
    """The Ray Serve application: ``replicas`` fixed replicas, or autoscaling between min and max."""
    options: dict = {"ray_actor_options": {"num_cpus": replica_cpus, "num_gpus": replica_gpus},
                     # max_ongoing_requests must admit a full batch of single-image requests.
                     "max_ongoing_requests": max(256, 2 * config.max_batch)}
    if max_replicas is not None:
        options["autoscaling_config"] = {"min_replicas": min_replicas or 1, "max_replicas": max_replicas,
                                         "target_ongoing_requests": max(2, config.max_batch // 4)}
    else:
        options["num_replicas"] = replicas
    return TeacherServer.options(**options).bind(config)


def wait_until_ready(url: str, timeout: float = 600.0) -> None:
    """Poll ``url``/health until the teacher is loaded; :class:`ConfigError` if it failed to load."""
    import requests

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            response = requests.get(f"{url}/health", timeout=10)
            if response.status_code == 200:
                return
            if response.headers.get("content-type", "").startswith("application/json"):
                body = response.json()
                if body.get("status") == "failed":
                    raise ConfigError(f"the teacher could not be loaded: {body.get('error')}")
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise ConfigError(f"the teacher server at {url} was not ready after {timeout:.0f} s")


def start_ray(address: str | None = None, num_cpus: int | None = None, object_store_mb: int | None = 512) -> None:
    """Join the Ray cluster at ``address``, or start a local one (``num_cpus`` cores, a capped object store:
    Ray would otherwise reserve a third of the machine's memory for it)."""
    import ray

    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(num_cpus=num_cpus or os.cpu_count(), include_dashboard=False, log_to_driver=False,
                 object_store_memory=None if object_store_mb is None else object_store_mb * 2**20)


def serve_teacher(config: ServeConfig, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, *, replicas: int = 1,
                  min_replicas: int | None = None, max_replicas: int | None = None, replica_cpus: float = 1.0,
                  replica_gpus: float = 0.0, address: str | None = None, num_cpus: int | None = None,
                  name: str = "vlkd-teacher", route_prefix: str = "/") -> str:
    """Start Ray (or join ``address``), Serve on ``host:port``, and the teacher; returns its URL once it is ready."""
    from ray import serve

    check_binding(host, config.token)
    start_ray(address, num_cpus)
    serve.start(http_options={"host": host, "port": port})
    serve.run(build_application(config, replicas, min_replicas, max_replicas, replica_cpus, replica_gpus),
              name=name, route_prefix=route_prefix, blocking=False)
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown if host not in ('0.0.0.0', '::') else '127.0.0.1'}:{port}{route_prefix.rstrip('/')}"
    wait_until_ready(url)
    return url


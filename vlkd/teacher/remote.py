"""``RemoteTeacher``: the frozen teacher served by ``vlkd serve``, behind the in-process teacher's interface.

A training job given ``teacher_service: {url: http://host:8000}`` sends its frames
to the server and gets the embeddings back; nothing else in the method changes.
The client

* checks ``/v1/info`` at construction and refuses a server whose teacher is not the
  run's (by the weights' SHA-256 when the run holds the weights, else by name and tag);
* splits large inputs into requests that fit the server's limits;
* sends pixels as float16 (default; exact to 2^-11) or uint8 (a quarter of the bytes
  of float32, rounded to 1/255), and reads the embeddings as ``.npy`` float32;
* retries connection errors, time-outs and 5xx answers with exponential back-off,
  then fails with :class:`TeacherUnavailableError` naming the server and the way
  back (a training run stops with its last checkpoint intact and resumes with
  ``--ckpt_path``); 4xx answers fail at once with the server's reason.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from vlkd.errors import ConfigError, VlkdError
from vlkd.teacher.backends import PreprocessConfig
from vlkd.teacher.prompts import resolve_templates
from vlkd.teacher.protocol import TeacherIdentity, TeacherMixin, check_same_teacher
from vlkd.teacher.regions import RegionCrop
from vlkd.teacher.wire import NPY, WireError, read_npy, write_npy

TOKEN_ENV = "VLKD_SERVE_TOKEN"
TRANSPORTS = ("float16", "uint8")
#: Answers worth another try: the server is starting, restarting or overloaded.
RETRY_STATUS = {500, 502, 503, 504}


class TeacherUnavailableError(VlkdError):
    """The teacher server did not answer within the client's retries."""


class TeacherRequestError(VlkdError):
    """The teacher server refused a request (a 4xx answer); the message is the server's reason."""


@dataclass
class TeacherServiceSpec:
    """Where a method's frozen targets come from when they do not come from its own weights.

    Args:
        url: the server (``http://127.0.0.1:8000``); ``None``: the in-process teacher.
        token: bearer token (``None``: ``$VLKD_SERVE_TOKEN`` if set).
        timeout: seconds per request.
        retries: further tries after a failed one.
        transport: ``float16`` or ``uint8`` pixels.
    """

    url: str | None = None
    token: str | None = None
    timeout: float = 120.0
    retries: int = 8
    transport: str = "float16"

    def build(self, expect: TeacherIdentity | None = None, expect_name: tuple[str, str | None] | None = None):
        """A :class:`RemoteTeacher` for ``url``, checked against the run's teacher (see :class:`RemoteTeacher`)."""
        if not self.url:
            raise ConfigError("teacher_service.url is not set: give the server's address, e.g. http://127.0.0.1:8000")
        return RemoteTeacher(self.url, token=self.token, timeout=self.timeout, retries=self.retries,
                             transport=self.transport, expect=expect, expect_name=expect_name)


class RemoteTeacher(TeacherMixin, nn.Module):
    """A client of ``vlkd serve`` with the :class:`~vlkd.teacher.protocol.Teacher` interface.

    Args:
        url: the server's base URL.
        token: bearer token; ``None`` reads ``$VLKD_SERVE_TOKEN``.
        timeout: seconds per request (a request waits while a restarting server comes back).
        retries: further tries after a connection error, time-out or 5xx; waits double from
            ``backoff`` seconds up to 10 s (8 retries: about 45 s in all).
        backoff: the first wait, in seconds.
        transport: ``float16`` or ``uint8`` pixels on the wire.
        expect: the run's teacher; the server must hold the same weights (SHA-256).
        expect_name: ``(model, pretrained)`` the server must serve, when the run holds no weights.
        text_cache_size: class-text embeddings kept on this side.
    """

    def __init__(
        self,
        url: str,
        token: str | None = None,
        timeout: float = 120.0,
        retries: int = 8,
        backoff: float = 0.5,
        transport: str = "float16",
        expect: TeacherIdentity | None = None,
        expect_name: tuple[str, str | None] | None = None,
        text_cache_size: int = 32,
    ):
        super().__init__()
        if transport not in TRANSPORTS:
            raise ConfigError(f"transport must be one of {TRANSPORTS}, got {transport!r}")
        if not isinstance(retries, int) or retries < 0 or not timeout > 0:
            raise ConfigError(f"need retries >= 0 and timeout > 0, got retries={retries!r}, timeout={timeout!r}")
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"teacher server url {url!r} must start with http:// or https://")
        self.url = url.rstrip("/")
        self.token = token or os.environ.get(TOKEN_ENV) or None
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.transport = transport
        self.text_cache_size = text_cache_size
        self.retried = 0  # tries repeated after a failure, over this client's life
        self._local = threading.local()
        self._text_cache: OrderedDict[tuple, torch.Tensor] = OrderedDict()
        # Outputs that have no input tensor to follow (text) go where this buffer is moved.
        self.register_buffer("_anchor", torch.empty(0), persistent=False)

        self.info = self._request("GET", "/v1/info").json()
        self._identity = TeacherIdentity.from_dict(self.info)
        self.limits = self.info["limits"]
        where = f"the teacher server at {self.url}"
        fix = "start the server with the run's teacher (vlkd serve --teacher ... --pretrained ...) or change the URL"
        if expect is not None:
            check_same_teacher(expect, self._identity, where, fix)
        elif expect_name is not None and (self._identity.model, self._identity.pretrained) != tuple(expect_name):
            raise ConfigError(f"{where} serves {self._identity.describe()}, but this run's teacher is "
                              f"{expect_name[0]} ({expect_name[1] or 'random weights'}): {fix}")

    # -- what the interface reports ---------------------------------------------------------
    @property
    def identity(self) -> TeacherIdentity:
        return self._identity

    @property
    def preprocess(self) -> PreprocessConfig:
        ident = self._identity
        return PreprocessConfig(ident.image_size, tuple(ident.mean), tuple(ident.std), ident.interpolation)

    @property
    def image_size(self) -> int:
        return self._identity.image_size

    @property
    def embed_dim(self) -> int:
        return self._identity.embed_dim

    @property
    def logit_scale(self) -> float:
        return float(self._identity.logit_scale)

    def train(self, mode: bool = True) -> RemoteTeacher:
        return super().train(False)  # frozen, like the in-process teacher

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_local", None)  # sessions are per process and thread
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._local = threading.local()

    # -- images -----------------------------------------------------------------------------
    def _pixels_payload(self, images: torch.Tensor) -> np.ndarray:
        pixels = images.detach().to("cpu", torch.float32, copy=True).clamp_(0, 1)  # never the caller's tensor
        if self.transport == "uint8":
            return pixels.mul_(255).round_().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        return pixels.to(torch.float16).numpy()

    def _images_per_request(self, images: torch.Tensor) -> int:
        per_image = images[0].numel() * (1 if self.transport == "uint8" else 2)
        by_bytes = max(1, (int(self.limits["max_body_bytes"]) - 4096) // per_image)
        return max(1, min(int(self.limits["max_images"]), by_bytes))

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) pixels in [0, 1] -> (B, D) L2-normalised embeddings, on the input's device."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"encode_images expects (B, 3, H, W) pixels in [0, 1], got shape {tuple(images.shape)}")
        step = self._images_per_request(images)
        parts = [self._post_npy("/v1/embed/images", self._pixels_payload(chunk)) for chunk in images.split(step)]
        return torch.cat(parts).to(images.device)

    @torch.no_grad()
    def encode_regions(self, images, boxes: torch.Tensor, crop: RegionCrop | None = None) -> torch.Tensor:
        """(M, D) embeddings of (M, 5) ``boxes`` ``[image, x0, y0, x1, y1]``; cropped on the server by ``crop``."""
        crop = crop or RegionCrop()
        images = list(images) if not isinstance(images, torch.Tensor) else list(images.unbind(0))
        boxes = torch.as_tensor(boxes, dtype=torch.float64).cpu()
        if boxes.ndim != 2 or boxes.shape[1] != 5:
            raise ConfigError(f"boxes must have shape (M, 5): [image index, x0, y0, x1, y1]; got {tuple(boxes.shape)}")
        if len(boxes) and (boxes[:, 0] >= len(images)).any():
            raise ConfigError(f"boxes name image indices beyond the {len(images)} image(s) given")
        out = torch.empty(len(boxes), self.embed_dim)
        params = {"enlarge": crop.enlarge, "min_size": crop.min_size, "square": str(crop.square).lower()}
        step = int(self.limits["max_boxes"])
        for index, image in enumerate(images):
            rows = (boxes[:, 0] == index).nonzero().flatten()
            for chunk in rows.split(step) if len(rows) else ():
                local = boxes[chunk].clone()
                local[:, 0] = 0
                query = {**params, "boxes": json.dumps(local.tolist())}
                out[chunk] = self._post_npy("/v1/embed/images", self._pixels_payload(image[None]), query)
        device = images[0].device if images else self._anchor.device
        return out.to(device)

    # -- text -------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        """(N,) sentences -> (N, D) L2-normalised embeddings."""
        prompts = list(prompts)
        if not prompts:
            raise ValueError("encode_prompts needs at least one sentence")
        step = int(self.limits["max_texts"])
        parts = [self._post_json("/v1/embed/text", {"texts": prompts[i : i + step]}) for i in range(0, len(prompts), step)]
        return torch.cat(parts).to(self._anchor.device)

    @torch.no_grad()
    def encode_text(self, class_names: Sequence[str], templates: str | Sequence[str] | None = None) -> torch.Tensor:
        """(N,) class names -> (N, D) prompt-ensembled class embeddings (cached here and on the server)."""
        class_names = list(class_names)
        if not class_names:
            raise ValueError("encode_text needs at least one class name")
        resolved = list(resolve_templates(templates))  # sent as a list: the server's set names may differ
        key = (tuple(class_names), tuple(resolved), str(self._anchor.device))
        if key in self._text_cache:
            self._text_cache.move_to_end(key)
            return self._text_cache[key]
        step = max(1, int(self.limits["max_prompts"]) // len(resolved))
        parts = [self._post_json("/v1/embed/text", {"classes": class_names[i : i + step], "templates": resolved})
                 for i in range(0, len(class_names), step)]
        embeddings = torch.cat(parts).to(self._anchor.device)
        self._text_cache[key] = embeddings
        while len(self._text_cache) > self.text_cache_size:
            self._text_cache.popitem(last=False)
        return embeddings

    # -- HTTP -------------------------------------------------------------------------------
    def _session(self):
        import requests

        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
            if self.token:
                session.headers["Authorization"] = f"Bearer {self.token}"
        return session

    def _post_npy(self, path: str, array: np.ndarray, params: dict | None = None) -> torch.Tensor:
        response = self._request("POST", path, data=write_npy(array), params=params,
                                 headers={"Content-Type": NPY, "Accept": NPY})
        return self._embeddings(response)

    def _post_json(self, path: str, payload: dict) -> torch.Tensor:
        response = self._request("POST", path, data=json.dumps(payload).encode(),
                                 headers={"Content-Type": "application/json", "Accept": NPY})
        return self._embeddings(response)

    def _embeddings(self, response) -> torch.Tensor:
        try:
            return torch.from_numpy(read_npy(response.content, f"the answer of {self.url}").astype(np.float32))
        except WireError as error:
            raise TeacherRequestError(str(error)) from None

    def _request(self, method: str, path: str, **kwargs):
        import requests

        last = "no answer"
        started = time.monotonic()
        for attempt in range(self.retries + 1):
            if attempt:
                self.retried += 1
                time.sleep(min(self.backoff * 2 ** (attempt - 1), 10.0))
            try:
                response = self._session().request(method, self.url + path, timeout=self.timeout, **kwargs)
            except (requests.ConnectionError, requests.Timeout) as error:
                last = f"{type(error).__name__}: {' '.join(str(error).split())[:160]}"
                continue
            if response.status_code in RETRY_STATUS:
                last = f"HTTP {response.status_code}: {_reason(response)}"
                continue
            if response.status_code == 401:
                raise TeacherRequestError(
                    f"the teacher server at {self.url} needs a token (401: {_reason(response)}): pass "
                    f"teacher_service.token or set {TOKEN_ENV}")
            if response.status_code >= 400:
                raise TeacherRequestError(
                    f"the teacher server at {self.url} refused {method} {path} ({response.status_code}): "
                    f"{_reason(response)}")
            return response
        raise TeacherUnavailableError(
            f"the teacher server at {self.url} did not answer {method} {path} after {self.retries + 1} tries over "
            f"{time.monotonic() - started:.0f} s (last: {last}): start it (vlkd serve) or fix the URL; a training "
            "run keeps its last checkpoint and resumes from it with --ckpt_path")


def _reason(response) -> str:
    try:
        return str(response.json().get("error", response.text))[:300]
    except ValueError:
        return " ".join(response.text.split())[:300] or response.reason

"""`vqt serve`: every task of a `MultiTaskModel` behind one HTTP endpoint, with request batching.

Built on FastAPI + uvicorn. The model is one in-process torch module whose whole point is that a batch of images
serves every task in one backbone pass, so what the server needs is an async front (validation, 4xx errors,
OpenAPI docs, a test client) and a micro-batcher, not a model-worker framework: LitServe and BentoML would run the
model in worker processes of their own and add a packaging layer this library does not need. The batcher
(`Batcher`) is one asyncio task: it takes the requests queued within `max_wait_ms` of the first (up to
`max_batch` images), runs them as one batch in a worker thread (the event loop keeps accepting), and answers each
request with its own tasks.

Endpoints:
- `POST /predict`: JSON `{"image": BASE64}` or `{"images": [BASE64, ...]}`, optional `"tasks": [...]` and
  `"top_k"`; or the raw image bytes as the body (any `Content-Type` but JSON), tasks and top_k as query
  parameters. Answer: `{"predictions": [{"tasks": {TASK: [{"class", "index", "score"}, ...]}}, ...]}`.
- `GET /health`: status, tasks, backbone, batching settings.
- `GET /tasks`: every task's method, classes and size; `GET /tasks/{name}/card`: its model card (markdown).

A bad request (not JSON, a missing field, not an image, a corrupt or truncated file, an image smaller than
`min_side` or over `max_pixels`, an unknown task, a body over `max_body_bytes`) is a 4xx with
`{"error": ONE LINE}`; the server keeps serving. It writes no file.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import io
import json
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from PIL import Image

from vqt.data.images import open_rgb
from vqt.errors import DataError, VQTError
from vqt.inference.multitask import MultiTaskModel, top_k
from vqt.inference.predict import inference_transform
from vqt.inference.settings import MAX_IMAGES_PER_REQUEST, ServeSettings
from vqt.precision import autocast, resolve_precision


class RequestError(Exception):
    """A client's mistake: answered with `status` and a one-line message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def decode_image(data: bytes, settings: ServeSettings, name: str) -> Image.Image:
    """Bytes -> RGB image, refusing sizes outside [min_side, max_pixels] before decoding the pixels."""
    try:
        with Image.open(io.BytesIO(data)) as probe:  # reads the header only
            width, height = probe.size
    except Image.DecompressionBombError as error:
        raise RequestError(413, f"{name}: too large to decode safely, over the limit of {settings.max_pixels} "
                                "pixels") from error
    except Exception as error:  # PIL raises many types for garbage; all mean "not an image"
        raise RequestError(400, f"{name}: not a readable image (unknown or corrupt format)") from error
    if width * height > settings.max_pixels:
        raise RequestError(413, f"{name}: {width}x{height} is over the limit of {settings.max_pixels} pixels")
    if min(width, height) < settings.min_side:
        raise RequestError(422, f"{name}: {width}x{height} is too small (each side must be >= {settings.min_side})")
    try:
        return open_rgb(io.BytesIO(data), name=name)
    except DataError as error:
        raise RequestError(400, str(error)) from error


@dataclass
class _Pending:
    image: torch.Tensor
    future: asyncio.Future = field(repr=False)


class Batcher:
    """Collects single images from concurrent requests into batches for one model pass (all tasks)."""

    def __init__(self, model: MultiTaskModel, settings: ServeSettings) -> None:
        self.model = model
        self.settings = settings
        self.device = next(model.backbone.parameters()).device
        self.precision = resolve_precision(settings.precision, self.device)
        self.queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self.batches = 0
        self.images = 0
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def logits(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every task's logits (1-row tensors) for one preprocessed image, batched with concurrent requests."""
        future = asyncio.get_running_loop().create_future()
        await self.queue.put(_Pending(image, future))
        return await future

    @torch.inference_mode()
    def _forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        with autocast(self.precision, self.device):
            return {name: value.float().cpu() for name, value in self.model.logits(images.to(self.device)).items()}

    async def _run(self) -> None:
        while True:
            pending = [await self.queue.get()]
            deadline = time.monotonic() + self.settings.max_wait_ms / 1000
            while len(pending) < self.settings.max_batch:
                timeout = deadline - time.monotonic()
                if timeout <= 0:
                    break
                try:
                    pending.append(await asyncio.wait_for(self.queue.get(), timeout))
                except asyncio.TimeoutError:
                    break
            try:
                out = await asyncio.to_thread(self._forward, torch.stack([p.image for p in pending]))
            except Exception as error:  # a model failure answers every waiting request, the loop goes on
                for item in pending:
                    if not item.future.done():
                        item.future.set_exception(error)
                continue
            self.batches += 1
            self.images += len(pending)
            for row, item in enumerate(pending):
                if not item.future.done():
                    item.future.set_result({name: value[row : row + 1] for name, value in out.items()})


def _tasks_of(model: MultiTaskModel, tasks: Any) -> list[str]:
    if tasks is None:
        return model.task_names
    if isinstance(tasks, str):
        tasks = [t for t in tasks.split(",") if t]
    if not isinstance(tasks, list) or not all(isinstance(t, str) for t in tasks) or not tasks:
        raise RequestError(422, '"tasks" must be a non-empty list of task names')
    unknown = [t for t in tasks if t not in model.tasks]
    if unknown:
        raise RequestError(404, f"unknown task {unknown[0]!r}; this server has {', '.join(model.task_names)}")
    return list(dict.fromkeys(tasks))


def _top_k_of(value: Any, default: int) -> int:
    if value is None:
        return default
    try:
        k = int(value)
    except (TypeError, ValueError):
        raise RequestError(422, f'"top_k" must be a positive integer, got {value!r}') from None
    if k < 1 or isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise RequestError(422, f'"top_k" must be a positive integer, got {value!r}')
    return k


def _images_of(body: dict[str, Any]) -> list[bytes]:
    if "image" in body and "images" in body:
        raise RequestError(422, 'give "image" or "images", not both')
    if "image" in body:
        encoded = [body["image"]]
    elif "images" in body:
        encoded = body["images"]
        if not isinstance(encoded, list) or not encoded:
            raise RequestError(422, '"images" must be a non-empty list of base64 strings')
    else:
        raise RequestError(422, 'missing field "image" (base64 image bytes) or "images" (a list of them)')
    if len(encoded) > MAX_IMAGES_PER_REQUEST:
        raise RequestError(413, f"{len(encoded)} images in one request; at most {MAX_IMAGES_PER_REQUEST}")
    decoded = []
    for index, item in enumerate(encoded):
        if not isinstance(item, str):
            raise RequestError(422, f"image {index}: expected a base64 string, got {type(item).__name__}")
        try:
            decoded.append(base64.b64decode(item, validate=True))
        except (binascii.Error, ValueError):
            raise RequestError(400, f"image {index}: not valid base64") from None
    return decoded


def build_app(model: MultiTaskModel, settings: ServeSettings | None = None) -> FastAPI:
    """The FastAPI application serving `model` (run it with uvicorn, or `vqt serve`)."""
    settings = settings or ServeSettings()
    model.eval()
    transform = inference_transform(model.configs[model.task_names[0]])
    batcher = Batcher(model, settings)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title="vqt serve", summary=f"{len(model.task_names)} tasks from one backbone pass",
                  lifespan=lifespan)
    app.state.batcher = batcher

    @app.exception_handler(RequestError)
    async def request_error(_request: Request, error: RequestError) -> JSONResponse:
        return JSONResponse({"error": error.message}, status_code=error.status)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "tasks": model.task_names,
                "backbone": model.configs[model.task_names[0]].get("backbone"),
                "max_batch": settings.max_batch, "max_wait_ms": settings.max_wait_ms,
                "batches": batcher.batches, "images": batcher.images}

    @app.get("/tasks")
    async def tasks() -> dict[str, Any]:
        return {"tasks": [{"name": name, "method": model.configs[name].get("method", "vqt"),
                           "num_classes": model.configs[name]["num_classes"], "classes": model.class_names(name),
                           "card": f"/tasks/{name}/card"} for name in model.task_names]}

    @app.get("/tasks/{name}/card", response_class=PlainTextResponse)
    async def card(name: str) -> str:
        _tasks_of(model, [name])
        from vqt.hub import model_card

        folder = model.folders.get(name)
        if folder is None:
            raise RequestError(404, f"task {name!r} was not loaded from a folder: no model card")
        return model_card(folder, config=model.configs[name])

    @app.post("/predict")
    async def predict(request: Request) -> dict[str, Any]:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > settings.max_body_bytes:
            raise RequestError(413, f"request body of {declared} bytes is over the limit of "
                                    f"{settings.max_body_bytes}")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > settings.max_body_bytes:
                raise RequestError(413, f"request body is over the limit of {settings.max_body_bytes} bytes")
        if not body:
            raise RequestError(422, "empty request body: send an image, or JSON with \"image\"")
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type == "application/json":
            try:
                payload = json.loads(body)
            except (ValueError, UnicodeDecodeError):
                raise RequestError(400, "the body is not valid JSON") from None
            if not isinstance(payload, dict):
                raise RequestError(422, "the JSON body must be an object")
            chosen = _tasks_of(model, payload.get("tasks"))
            k = _top_k_of(payload.get("top_k"), settings.default_top_k)
            raw = _images_of(payload)
        else:
            chosen = _tasks_of(model, request.query_params.get("tasks"))
            k = _top_k_of(request.query_params.get("top_k"), settings.default_top_k)
            raw = [bytes(body)]
        images = [transform(decode_image(data, settings, f"image {index}")) for index, data in enumerate(raw)]
        answers = await asyncio.gather(*(batcher.logits(image) for image in images))
        return {"predictions": [{"tasks": {name: top_k(logits[name], model.class_names(name), k)[0]
                                           for name in chosen}} for logits in answers]}

    return app


def serve(adapters: Sequence[str], *, host: str = "127.0.0.1", port: int = 8000,
          settings: ServeSettings | None = None, log_level: str = "info") -> None:
    """Load the adapters (`vqt.load_adapters`) and serve them until interrupted."""
    import uvicorn

    from vqt.inference.multitask import load_adapters

    model = load_adapters(list(adapters))
    if torch.cuda.is_available():
        model = model.cuda()
    try:
        uvicorn.run(build_app(model, settings), host=host, port=port, log_level=log_level)
    except OSError as error:
        raise VQTError(f"cannot serve on {host}:{port}: {error}") from error

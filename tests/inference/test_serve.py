"""`vqt serve`'s app: answers equal `predict_tasks`, concurrent requests are batched, and every bad request gets
a 4xx with a one-line message while the server keeps serving."""

from __future__ import annotations

import base64
import io
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tests.helpers import make_trained
from vqt.inference.multitask import load_adapters, predict_tasks
from vqt.inference.server import build_app
from vqt.inference.settings import ServeSettings

pytestmark = pytest.mark.usefixtures("one_thread")


def png(width: int = 40, height: int = 40, colour=(200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def huge_png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (valid IHDR CRC) but holds no pixels: refused before decoding."""
    data = bytearray(png(4, 4))
    ihdr = data[12:29]  # b"IHDR" + 13 bytes
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)) & 0xFFFFFFFF)
    return bytes(data)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def adapters(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("serve")
    return [make_trained(root / "shapes", "vqt", seed=1, num_queries=1),
            make_trained(root / "probe", "linear", seed=3, classes=2)]


@pytest.fixture
def client(adapters: list[Path], tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = ServeSettings(max_batch=8, max_wait_ms=300, max_body_bytes=2**20)
    with TestClient(build_app(load_adapters(adapters), settings)) as test_client:
        yield test_client
    assert list(tmp_path.iterdir()) == []  # the server wrote nothing


def test_answers_equal_predict_tasks(client: TestClient, adapters: list[Path], tmp_path: Path) -> None:
    image = png(colour=(30, 200, 30))
    answer = client.post("/predict", json={"image": b64(image), "top_k": 2})
    assert answer.status_code == 200
    [got] = answer.json()["predictions"]
    path = tmp_path.parent / f"{tmp_path.name}-image.png"
    path.write_bytes(image)
    try:
        [expected] = predict_tasks(adapters, [path], top_k_classes=2)
    finally:
        path.unlink()
    for task in ("shapes", "probe"):
        assert [p["index"] for p in got["tasks"][task]] == [p["index"] for p in expected["tasks"][task]]
        assert [p["score"] for p in got["tasks"][task]] == pytest.approx(
            [p["score"] for p in expected["tasks"][task]], abs=1e-5)
    # Raw bytes, a chosen task, and several images in one request.
    raw = client.post("/predict?tasks=probe&top_k=1", content=image, headers={"content-type": "image/png"})
    assert raw.status_code == 200 and list(raw.json()["predictions"][0]["tasks"]) == ["probe"]
    assert raw.json()["predictions"][0]["tasks"]["probe"][0] == got["tasks"]["probe"][0]
    many = client.post("/predict", json={"images": [b64(image), b64(png())], "tasks": ["shapes"]})
    assert many.status_code == 200 and len(many.json()["predictions"]) == 2


def test_concurrent_requests_share_batches(client: TestClient) -> None:
    image = b64(png())
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: client.post("/predict", json={"image": image}), range(8)))
    assert [a.status_code for a in answers] == [200] * 8
    assert len({str(a.json()) for a in answers}) == 1  # the same image: the same answer, whatever its batch
    health = client.get("/health").json()
    assert health["images"] == 8 and health["batches"] < 8


@pytest.mark.parametrize(
    ("request_args", "status", "message"),
    [
        (dict(content=b"{not json", headers={"content-type": "application/json"}), 400, "not valid JSON"),
        (dict(json={"top_k": 3}), 422, 'missing field "image"'),
        (dict(json=[1, 2]), 422, "must be an object"),
        (dict(json={"image": "***"}), 400, "not valid base64"),
        (dict(json={"image": 7}), 422, "expected a base64 string"),
        (dict(json={"image": b64(b"hello, not an image")}), 400, "not a readable image"),
        (dict(content=png()[:60], headers={"content-type": "image/png"}), 400, "corrupt or truncated"),
        (dict(json={"image": b64(png(1, 1))}), 422, "1x1 is too small"),
        (dict(content=huge_png_header(20000, 20000), headers={"content-type": "image/png"}), 413,
         "over the limit of 40000000 pixels"),
        (dict(content=huge_png_header(8000, 8000), headers={"content-type": "image/png"}), 413,
         "8000x8000 is over the limit of 40000000 pixels"),
        (dict(json={"image": b64(png()), "tasks": ["nope"]}), 404, "unknown task 'nope'"),
        (dict(json={"image": b64(png()), "tasks": []}), 422, "non-empty list"),
        (dict(json={"image": b64(png()), "top_k": 0}), 422, "positive integer"),
        (dict(content=b"", headers={"content-type": "image/png"}), 422, "empty request body"),
        (dict(content=b"\0" * (2**20 + 1), headers={"content-type": "image/png"}), 413, "over the limit"),
    ],
)
def test_bad_requests_get_a_one_line_4xx(client: TestClient, request_args: dict, status: int,
                                         message: str) -> None:
    answer = client.post("/predict", **request_args)
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert message in error and "\n" not in error
    # ... and the server keeps serving.
    assert client.post("/predict", json={"image": b64(png())}).status_code == 200


def test_health_tasks_and_cards(client: TestClient) -> None:
    assert client.get("/health").json()["status"] == "ok"
    tasks = client.get("/tasks").json()["tasks"]
    assert [t["name"] for t in tasks] == ["shapes", "probe"] and tasks[1]["classes"] == ["probe-0", "probe-1"]
    card = client.get("/tasks/probe/card")
    assert card.status_code == 200 and "linear" in card.text
    assert client.get("/tasks/nope/card").status_code == 404

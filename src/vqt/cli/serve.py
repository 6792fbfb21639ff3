"""`vqt serve ADAPTER...`: serve VQT / linear / Head2Toe adapters of one backbone over HTTP (FastAPI + uvicorn).

Every request's image goes through one backbone pass shared by all tasks, batched with concurrent requests
(`--max-batch` images, waiting at most `--max-wait-ms` for them). `NAME=PATH` names a task. Endpoints:
POST /predict (JSON {"image": BASE64, "tasks": [...], "top_k": K}, or the raw image bytes as the body),
GET /health, GET /tasks, GET /tasks/NAME/card; a bad request gets a 4xx with {"error": ONE LINE}.

    vqt serve runs/cats/adapter runs/dogs/adapter --port 8000
    curl -s --data-binary @photo.jpg -H 'Content-Type: image/jpeg' 'localhost:8000/predict?top_k=3'
"""

from __future__ import annotations

import argparse

from vqt.cli.options import PRECISION_HELP
from vqt.protocol.validation import PRECISION_CHOICES


def register(subparsers: argparse._SubParsersAction) -> None:
    from vqt.inference.settings import MAX_BODY_BYTES, MAX_PIXELS

    parser = subparsers.add_parser("serve", help="serve adapters over HTTP, all tasks from one backbone pass",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("adapters", nargs="+", metavar="[NAME=]ADAPTER", help="adapter folders or hf-hub: ids")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    parser.add_argument("--max-batch", type=int, default=16, help="images per model pass (default: 16)")
    parser.add_argument("--max-wait-ms", type=float, default=5.0,
                        help="how long the first request of a batch waits for others (default: 5)")
    parser.add_argument("--max-body-bytes", type=int, default=MAX_BODY_BYTES,
                        help=f"largest request body accepted (default: {MAX_BODY_BYTES})")
    parser.add_argument("--max-pixels", type=int, default=MAX_PIXELS,
                        help=f"largest image accepted, width x height (default: {MAX_PIXELS})")
    parser.add_argument("--precision", default="auto", choices=PRECISION_CHOICES, help=PRECISION_HELP)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vqt.errors import VQTError
    from vqt.inference.server import serve
    from vqt.inference.settings import ServeSettings
    from vqt.rundir import user_errors

    if args.max_batch < 1 or args.max_wait_ms < 0:
        raise VQTError("--max-batch must be >= 1 and --max-wait-ms >= 0")
    settings = ServeSettings(max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
                             max_body_bytes=args.max_body_bytes, max_pixels=args.max_pixels,
                             precision=args.precision)
    user_errors(serve)(args.adapters, host=args.host, port=args.port, settings=settings)
    return 0

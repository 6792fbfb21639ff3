"""`vqt push ADAPTER REPO_ID`: upload an adapter folder with a generated model card to the Hugging Face Hub.

The repository is created when missing (log in first: `hf auth login`, or set HF_TOKEN). The model card
(README.md, written into the adapter folder) names the backbone, task, classes, accuracy when the run recorded it,
Q and the trainable parameters, and shows how to load the adapter: `vqt.load_adapter("hf-hub:REPO_ID")`,
`vqt predict hf-hub:REPO_ID IMAGES`. Exit status 0 when uploaded, 2 on an error.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("push", help="upload an adapter and its model card to the Hugging Face Hub",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("adapter", type=Path, help="adapter folder (e.g. runs/one/adapter)")
    parser.add_argument("repo_id", help="Hub repository, OWNER/NAME")
    parser.add_argument("--private", action="store_true", default=None,
                        help="create the repository private (an existing one keeps its visibility)")
    parser.add_argument("--message", default=None, help="commit message (default: one naming the adapter)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vqt.hub import push_to_hub
    from vqt.rundir import user_errors

    url = user_errors(push_to_hub)(args.adapter, args.repo_id, private=args.private, commit_message=args.message)
    print(f"pushed {args.adapter} to {url}")
    print(f"use it: vqt predict hf-hub:{url.removeprefix('https://huggingface.co/')} IMAGES")
    return 0

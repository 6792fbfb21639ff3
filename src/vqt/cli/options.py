"""Command options with one source of truth for their defaults: built-in < YAML file (`--config`) < command line.

Why not argparse defaults: with a YAML file in the middle, a value given on the command line must win over the
file and the file over the default, so argparse must not fill in defaults itself. Every option here is declared
with `default=None` (argparse), its real default kept in `Option.default` and shown in `--help`.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vqt.errors import VQTError
from vqt.io import read_user_text
from vqt.protocol.validation import PRECISION_CHOICES, STORE_DEVICE_CHOICES


@dataclass(frozen=True)
class Option:
    """One command option: its flag, real default and help text (the default is appended to the help)."""

    flag: str
    default: Any
    help: str
    type: Callable[[str], Any] | None = None
    nargs: str | None = None
    choices: Sequence[str] | None = None
    flag_action: bool = False  # a switch: present -> True
    many: bool = False  # a list: values separated by commas and/or spaces (`--lrs 1,0.5` or `--lrs 1 0.5`)
    extra: dict = field(default_factory=dict)

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")


# `vqt.precision.PRECISIONS` and the places a store may live; spelled here so building the command-line parsers
# does not import torch (tests/test_precision.py checks they agree).
PRECISION_HELP = ("compute precision of the backbone and query path: bf16 runs them under torch.autocast "
                  "(parameters, optimiser state, logits and loss stay fp32); auto: bf16 on a CUDA device that "
                  "supports it, fp32 elsewhere")

# Options `vqt train` and `vqt sweep` share word for word; each command supplies its own defaults.
SHARED_OPTIONS: dict[str, dict[str, Any]] = {
    "--backbone": dict(help="backbone spelling: NAME.TAG (hub), NAME@FILE, NAME@random, offline:dinov2_s14"),
    "--variant": dict(help="how a layer's query outputs form its feature piece",
                      choices=("concat", "mean", "weighted")),
    "--query-dropout": dict(help="dropout on the queries in training", type=float),
    "--tuned-layers": dict(help="adapting methods (vpt-deep, adaptformer, lora, finetune, bitfit): adapt only the "
                           "last N blocks, so backward stops there and training memory shrinks (unset: every block)",
                           type=int),
    "--img-size": dict(help="input resolution the backbone is built at (unset: its own)", type=int),
    "--epochs": dict(help="training epochs", type=int),
    "--warmup-epochs": dict(help="linear warm-up epochs before the cosine", type=int),
    "--batch-size": dict(help="training batch", type=int),
    "--group-lasso": dict(help="lambda of the compression penalty", type=float),
    "--store-dtype": dict(help="dtype of the feature stores", choices=("float16", "bfloat16", "float32")),
    "--store-dir": dict(help="feature-store cache (unset: <out>/stores)"),
    "--precision": dict(help=PRECISION_HELP, choices=PRECISION_CHOICES),
    "--store-device": dict(help="where a training store is held while training from it: cuda (copied to GPU memory "
                           "once), cpu (read batch by batch), or auto: cuda when the device is CUDA and the store "
                           "fits in a part of its free memory", choices=STORE_DEVICE_CHOICES),
    "--overwrite-stores": dict(help="replace cached stores made for another request", flag_action=True),
    "--device": dict(help="cpu, cuda, cuda:1 or auto"),
    "--num-workers": dict(help="image-decoding worker processes", type=int),
    "--extract-batch": dict(help="images per backbone pass when extracting stores", type=int),
}


def shared_options(defaults: Mapping[str, Any], *flags: str) -> tuple[Option, ...]:
    """The `SHARED_OPTIONS` named by `flags`, with defaults taken from `defaults` (keyed by dest)."""
    return tuple(Option(flag, defaults[flag.lstrip("-").replace("-", "_")], **SHARED_OPTIONS[flag]) for flag in flags)


class _ListValues(argparse.Action):
    """A `many` option's tokens (`--lrs 1.0 0.5`, `--lrs 1.0,0.5`, `--lrs 1.0, 0.5`) joined into the one
    comma-separated text its `type` parses, exactly what a single token (or a YAML string) gives."""

    def __init__(self, *args: Any, parse: Callable[[str], Any] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.parse = parse

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        tokens = [str(value) for value in values]
        text = tokens[0] if len(tokens) == 1 else ",".join(t.strip().strip(",") for t in tokens if t.strip(", "))
        if self.parse is not None:
            try:
                text = self.parse(text)
            except (TypeError, ValueError, argparse.ArgumentTypeError) as error:
                raise argparse.ArgumentError(self, str(error)) from error
        setattr(namespace, self.dest, text)


def add_options(parser: argparse.ArgumentParser, options: Sequence[Option]) -> None:
    """Add `options` to `parser` (argparse default None, so unset options can be told apart) and `--config`."""
    parser.add_argument(
        "--config", type=Path, default=None, help="YAML file of option values (keys as the long option names, "
        "with - or _); command-line options override it (default: none)"
    )
    for option in options:
        shown = option.default if option.default is not None else "none"
        text = f"{option.help} (default: {shown})"
        if option.flag_action:
            parser.add_argument(option.flag, action="store_true", default=None, help=text)
            continue
        kwargs: dict[str, Any] = {"default": None, "help": text}
        if option.many:
            kwargs.update(nargs="+", action=_ListValues, parse=option.type,
                          help=f"{option.help}; several values separated by commas and/or spaces (default: {shown})")
            parser.add_argument(option.flag, **kwargs, **option.extra)
            continue
        if option.type is not None:
            kwargs["type"] = option.type
        if option.nargs is not None:
            kwargs["nargs"] = option.nargs
        if option.choices is not None:
            kwargs["choices"] = option.choices
        parser.add_argument(option.flag, **kwargs, **option.extra)


def load_yaml(path: Path) -> dict[str, Any]:
    """Read a configuration file; a missing, unreadable or malformed file is a user error, not a traceback."""
    text = read_user_text(path, what="configuration file", directory_hint="; --config takes a YAML file")
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as error:
        raise VQTError(f"configuration file {path} is not valid YAML: {error}") from error
    if not isinstance(data, dict):
        raise VQTError(f"configuration file {path} must hold a mapping of option names to values")
    return {str(key).replace("-", "_"): value for key, value in data.items()}


def resolve(args: argparse.Namespace, options: Sequence[Option]) -> dict[str, Any]:
    """The effective configuration: defaults, then the `--config` file, then what the command line set."""
    known = {option.dest: option for option in options}
    config = {dest: option.default for dest, option in known.items()}
    if getattr(args, "config", None) is not None:
        from_file = load_yaml(args.config)
        unknown = sorted(set(from_file) - set(known))
        if unknown:
            raise VQTError(f"unknown option(s) in {args.config}: {', '.join(unknown)} (known: {', '.join(known)})")
        for key, value in from_file.items():
            option = known[key]
            if option.type is not None and value is not None and not isinstance(value, (list, dict, bool)):
                try:
                    value = option.type(str(value))
                except (TypeError, ValueError, argparse.ArgumentTypeError) as error:
                    raise VQTError(f"{args.config}: bad value for {key}: {value!r} ({error})") from error
            config[key] = value
    for dest in known:
        value = getattr(args, dest, None)
        if value is not None:
            config[dest] = value
    return {key: (str(value) if isinstance(value, Path) else value) for key, value in config.items()}


def float_list(text: str) -> list[float]:
    """'1.0,0.5' or '1.0 0.5' -> [1.0, 0.5]."""
    try:
        return [float(part) for part in text.replace(",", " ").split()]
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}") from error


def queries_spec(text: str) -> int | dict[str, int]:
    """'10' (every task) or 'svhn=10,dtd=1' (per task; others keep the registry's Q)."""
    text = str(text).strip()
    if "=" not in text:
        try:
            return int(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(f"expected an integer or task=Q pairs, got {text!r}") from error
    result: dict[str, int] = {}
    for part in text.split(","):
        if not part.strip():
            continue
        name, _, value = part.partition("=")
        try:
            result[name.strip()] = int(value)
        except ValueError as error:
            raise argparse.ArgumentTypeError(f"bad task=Q pair {part!r}") from error
    return result


def compress_spec(text: str) -> str | float | None:
    """'none', 'official' (the Q=1 tasks, keeping 0.7, as the paper) or a keep fraction in (0, 1]."""
    text = str(text).strip().lower()
    if text in ("none", "off", "no", ""):
        return None
    if text == "official":
        return "official"
    try:
        value = float(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(
            f"--compress takes a fraction in (0, 1], 'official' or 'none', got {text!r}") from error
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"--compress fraction must lie in (0, 1], got {value}")
    return value


# What `validate_config` checks, by configuration key: integers and their least value; numbers, and number
# grids, with their bound and whether it is excluded (strict).

"""The `vqt` console script: checks that the `vqt` package Python finds is Visual Query Tuning's, then runs the CLI.

It lives outside the `vqt` package on purpose. The unrelated PyPI project `vqt` (a Variable-Q transform) also
installs a top-level `vqt` package; when its files win (it was installed after this library into the same
site-packages, or it comes earlier on `sys.path`), `import vqt` runs *its* `__init__.py`, so no check inside
`vqt/` could run and `from vqt.cli.main import main` would end in a traceback about a missing module. This module
finds the `vqt` package without executing it, reads its `__init__.py` for this library's marker, and otherwise
prints one line naming what it found and how to fix it (exit 2).

The other direction (this library's `__init__.py` won, the other distribution's metadata is still installed) is
caught by `vqt/__init__.py` itself, for the command and for `import vqt` alike.
"""

from __future__ import annotations

import sys

MARKER = 'DISTRIBUTION = "visual-query-tuning"'  # a line of vqt/__init__.py
FIX = ("pip uninstall vqt, then pip install --force-reinstall --no-deps visual-query-tuning (from a checkout: "
       "pip install --force-reinstall --no-deps -e .), or use a separate virtual environment")


def foreign_vqt() -> str | None:
    """None when `import vqt` would import this library; else a one-line description of the problem."""
    from importlib.util import find_spec

    try:
        spec = find_spec("vqt")
    except (ImportError, ValueError) as error:
        return (f"the 'vqt' package cannot be located ({error}); reinstall: pip install --force-reinstall "
                "visual-query-tuning")
    if spec is None:
        return ("no 'vqt' package is installed for this Python; reinstall: pip install --force-reinstall "
                "visual-query-tuning")
    if spec.origin is None or not spec.origin.endswith("__init__.py"):  # a folder without __init__.py
        where = ", ".join(spec.submodule_search_locations or []) or "?"
        return (f"the 'vqt' package at {where} has no __init__.py: a partial install (uninstalling a distribution "
                f"that shares the folder removes it); reinstall: pip install --force-reinstall --no-deps "
                f"visual-query-tuning")
    try:
        with open(spec.origin, encoding="utf-8", errors="replace") as file:
            if MARKER in file.read():
                return None
    except OSError:
        pass
    owners = ""
    try:
        from importlib.metadata import packages_distributions

        names = sorted(set(packages_distributions().get("vqt", [])) - {"visual-query-tuning", "visual_query_tuning"})
        owners = f" (installed by {', '.join(names)})" if names else ""
    except Exception:  # noqa: BLE001 - only decorates the message
        pass
    return (f"the 'vqt' package Python imports ({spec.origin}) is not Visual Query Tuning's but another project's"
            f"{owners}: PyPI's `vqt` is an unrelated library with the same import name. Fix: {FIX}")


def main() -> int:
    problem = foreign_vqt()
    if problem is None:
        try:
            from vqt.cli.main import main as vqt_main
        except ImportError as error:
            if type(error).__name__ != "DistributionClash":  # a real bug or a missing dependency: the traceback
                raise
            problem = str(error)  # vqt/__init__.py found another distribution that provides `vqt`
        else:
            return vqt_main()
    print(f"vqt: error: {problem}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())

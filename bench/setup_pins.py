"""The requirement specs setup.py gives for some distributions, so the wheelhouse follows setup.py's pins.

    python bench/setup_pins.py [--exact] NAME [NAME ...]

Prints one spec per line in the order asked (e.g. `megatron-core==0.16.1`), read from the
`install_requires` and `extras_require` lists of setup.py by parsing it (nothing is executed or
imported, so any Python 3 reads it). Names match as pip matches them (case, `-`, `_` and `.` alike).
With --exact every spec must pin one version (`==X`); a name setup.py lacks, or does not pin under
--exact, is an error that names it. Used by bench/wheelhouse.sh and bench/check_wheelhouse.sh.
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from pathlib import Path

SETUP = Path(__file__).resolve().parents[1] / "setup.py"
SPEC = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*(.*)$")


def normalise(name: str) -> str:
    """PEP 503 name normalisation: `Megatron_Core` and `megatron-core` are one distribution."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_strings(setup_py: Path = SETUP) -> list[str]:
    """Every string of setup()'s install_requires and extras_require, in file order."""
    tree = ast.parse(setup_py.read_text(), str(setup_py))
    found = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "setup"):
            continue
        for keyword in node.keywords:
            if keyword.arg == "install_requires":
                lists = [keyword.value]
            elif keyword.arg == "extras_require" and isinstance(keyword.value, ast.Dict):
                lists = keyword.value.values
            else:
                continue
            for value in lists:
                found += [item.value for item in getattr(value, "elts", [])
                          if isinstance(item, ast.Constant) and isinstance(item.value, str)]
    if not found:
        raise SystemExit(f"{setup_py}: no install_requires found in its setup() call")
    return found


def pins(names: list[str], exact: bool, setup_py: Path = SETUP) -> list[str]:
    """setup.py's spec of each name (`name==1.2` under `exact`)."""
    by_name = {}
    for spec in requirement_strings(setup_py):
        match = SPEC.match(spec)
        if match:
            by_name.setdefault(normalise(match[1]), spec.strip())
    out = []
    for name in names:
        spec = by_name.get(normalise(name))
        if spec is None:
            raise SystemExit(f"{setup_py}: {name} is not among its requirements; add it there first")
        if exact and not re.fullmatch(r"[A-Za-z0-9._-]+\s*==\s*[A-Za-z0-9.+!-]+", spec):
            raise SystemExit(f"{setup_py}: {name} is required as {spec!r}, not pinned to one version (name==X); "
                             f"the GPU machine's wheels must be the versions the code was written for")
        out.append(spec.replace(" ", ""))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--exact", action="store_true", help="every name must be pinned with ==")
    parser.add_argument("--setup", type=Path, default=SETUP, help=argparse.SUPPRESS)
    parser.add_argument("names", nargs="+")
    args = parser.parse_args(argv)
    print("\n".join(pins(args.names, args.exact, args.setup)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

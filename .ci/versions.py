"""Installed versions against the tested set (constraints.txt): which packages differ.

Usage: python .ci/versions.py [constraints.txt] [--json FILE]. Prints one line per pinned package
whose installed version differs (newer, older or absent) and exits 0; tests/test_upstream.py uses
``differences`` to fail when a newest-releases install holds a package back below the tested set.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from importlib import metadata
from pathlib import Path

from packaging.version import InvalidVersion, Version

ROOT = Path(__file__).resolve().parents[1]


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(path: Path) -> dict[str, str]:
    """``name==version`` lines of a constraints file, by canonical name."""
    found = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            found[canonical(name)] = version.strip()
    return found


def installed() -> dict[str, str]:
    return {canonical(d.metadata["Name"]): d.version for d in metadata.distributions() if d.metadata["Name"]}


def _release(version: str) -> Version | None:
    try:
        return Version(Version(version).public)  # 2.13.0+cpu is 2.13.0
    except InvalidVersion:
        return None


def differences(path: Path = ROOT / "constraints.txt") -> list[dict[str, str]]:
    """Pinned packages whose installed version differs: name, tested, installed, and how."""
    have = installed()
    rows = []
    for name, tested in sorted(pins(path).items()):
        current = have.get(name)
        old, new = _release(tested), _release(current) if current else None
        if current is None:
            how = "absent"
        elif old is None or new is None or new == old:
            continue
        else:
            how = "newer" if new > old else "older"
        rows.append({"package": name, "tested": tested, "installed": current or "", "how": how})
    return rows


def report(rows: list[dict[str, str]]) -> str:
    if not rows:
        return "installed versions: the tested set (constraints.txt), no package differs"
    width = max(len(row["package"]) for row in rows)
    lines = [f"{len(rows)} package(s) differ from the tested set (constraints.txt):"]
    for row in rows:
        now = row["installed"] or "(not installed)"
        lines.append(f"  {row['package']:<{width}}  {row['tested']} -> {now}  ({row['how']})")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("constraints", nargs="?", default=str(ROOT / "constraints.txt"))
    parser.add_argument("--json", help="also write the differences as JSON to this file")
    args = parser.parse_args(argv)
    rows = differences(Path(args.constraints))
    print(report(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""CI: every GPU extra resolves alone and with the test dependencies, with one CuPy, without installing it.

For each combination, pip resolves the project's dependencies against the
package index with ``--dry-run --ignore-installed --report`` (no GPU wheel is
downloaded beyond its metadata) and the report must hold exactly one CuPy
wheel, of the CUDA major the extra names, and cuda-bindings of that major.
Exit status 1, with what is wrong, where any combination does not.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMBINATIONS = {"cuda12,test": 12, "cuda13,test": 13, "cuda12": 12, "cuda13": 13, "compile,test": 13}
"""Extras to resolve together, and the CUDA major their CuPy and cuda-bindings must have."""


def resolve(extras: str) -> dict[str, str]:
    """``{package name: version}`` that pip would install for the project with ``extras``."""
    with tempfile.TemporaryDirectory() as folder:
        report = Path(folder) / "report.json"
        done = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
                               "--report", str(report), f"{ROOT}[{extras}]"], capture_output=True, text=True)
        if done.returncode != 0:
            said = [line for line in done.stderr.splitlines() if not line.startswith("WARNING: Location")]
            raise RuntimeError(f"pip could not resolve .[{extras}]:\n" + "\n".join(said)[-2000:])
        installs = json.loads(report.read_text(encoding="utf-8"))["install"]
    return {item["metadata"]["name"].lower(): item["metadata"]["version"] for item in installs}


def problems(extras: str, major: int, packages: dict[str, str]) -> list[str]:
    """What is wrong with one resolution (empty when nothing is)."""
    found = []
    cupys = sorted(name for name in packages if name.startswith("cupy"))
    if cupys != [f"cupy-cuda{major}x"]:
        found.append(f".[{extras}] resolves to the CuPy wheels {cupys}, not cupy-cuda{major}x alone")
    bindings = packages.get("cuda-bindings")
    if bindings is None or int(bindings.split(".")[0]) != major:
        found.append(f".[{extras}] resolves to cuda-bindings {bindings}, not of CUDA {major}")
    return found


def main() -> int:
    failures = []
    for extras, major in COMBINATIONS.items():
        try:
            packages = resolve(extras)
        except RuntimeError as error:
            failures.append(str(error))
            continue
        found = problems(extras, major, packages)
        failures += found
        cupy = next((f"{name} {version}" for name, version in packages.items() if name.startswith("cupy")), None)
        print(f".[{extras}]: {len(packages)} packages, {cupy}, cuda-bindings {packages.get('cuda-bindings')}"
              + ("" if not found else " -- WRONG"))
    for failure in failures:
        print(failure, file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

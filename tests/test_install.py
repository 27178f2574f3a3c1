"""A user's install is a user's install: what ``make run`` installs on a fresh clone holds no
package that only the tests need."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _name(requirement: str) -> str:
    """The normalised project name of a requirement string."""
    match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement.strip())
    assert match is not None, requirement
    return re.sub(r"[-_.]+", "-", match[0]).lower()


def test_make_run_installs_no_test_only_package(tmp_path: Path) -> None:
    # the install command `make run` would run on a fresh clone, taken from the Makefile
    plan = subprocess.run(["make", "-n", "-B", "run"], cwd=ROOT, capture_output=True,
                          text=True, check=True).stdout
    installs = [shlex.split(line) for line in plan.splitlines()
                if "pip install" in line and "--upgrade pip" not in line]
    assert len(installs) == 1, plan
    args = [a for a in installs[0][installs[0].index("install") + 1:] if a != "--quiet"]
    assert not any("[" in a for a in args), args  # no extras
    # resolved in a fresh environment (nothing installed is reused), not installed
    subprocess.run([sys.executable, "-m", "venv", str(tmp_path / "venv")], check=True)
    report = tmp_path / "report.json"
    subprocess.run([str(tmp_path / "venv" / "bin" / "pip"), "install", "--quiet", "--dry-run",
                    "--ignore-installed", "--report", str(report), *args],
                   cwd=ROOT, check=True, capture_output=True, timeout=600)
    installed = json.loads(report.read_text())["install"]
    names = {_name(item["metadata"]["name"]) for item in installed}
    required_by_others = {
        _name(requirement)
        for item in installed
        for requirement in item["metadata"].get("requires_dist") or []
        if "extra ==" not in requirement
    }
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = {_name(r) for r in project["dependencies"]}
    test_only = {_name(r) for r in project["optional-dependencies"]["test"]} - runtime
    assert runtime <= names
    # a test extra may only be there because a runtime dependency needs it
    # (compressed-segmentation, through cloud-volume, declares pytest a dependency)
    unexpected = (names & test_only) - required_by_others
    assert not unexpected, unexpected
    assert "intern" not in names and "tensorstore" not in names and "selenium" not in names

"""The README's "Try it" examples run verbatim against the demo (only the port differs)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from .servers import RelayProcess

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def _section(title: str) -> str:
    start = README.index(f"## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start:end]


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", _section("Try it"), flags=re.S)


@pytest.fixture(scope="module")
def relay(demo_relay: RelayProcess) -> RelayProcess:
    return demo_relay


def test_the_readme_has_examples() -> None:
    assert len(_blocks("sh")) == 1 and len(_blocks("python")) == 2
    assert "make run" in README and "make test" in README


def test_curl_then_python_examples(relay: RelayProcess, tmp_path: Path) -> None:
    def run(command: list[str], text: str) -> str:
        text = text.replace("127.0.0.1:8000", relay.host)
        result = subprocess.run([*command, text], cwd=tmp_path, capture_output=True, text=True,
                                timeout=300)
        assert result.returncode == 0, result.stderr
        return result.stdout

    out = run(["bash", "-euo", "pipefail", "-c"], _blocks("sh")[0])
    assert '"collections":["demo"]' in out
    error = '{"status":400,"code":1001,"message":"Incorrect cutout arguments 0/0:2000/0:10/0:10"}'
    assert error in out
    decode, intern_example = _blocks("python")
    assert run([sys.executable, "-c"], decode).split() == [
        "(16,", "512,", "512)", "uint8", "(10,", "200,", "200)", "uint64"]
    lines = run([sys.executable, "-c"], intern_example).splitlines()
    assert lines[0] == "['demo']"
    assert lines[1] == "(16, 1024, 1024) uint8"
    assert lines[2].startswith("(64, 1024, 1024) ")

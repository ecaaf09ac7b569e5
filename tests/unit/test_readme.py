"""The README's Python runs as written, and it links nothing outside the repo."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README, flags=re.S)


def test_the_readmes_python_imports_run():
    imports = [
        line
        for block in python_blocks()
        for line in block.splitlines()
        if re.match(r"(from \S+ import |import )", line)
    ]
    assert any("orch.client" in line for line in imports)
    for line in imports:
        exec(compile(line, "README.md", "exec"), {})  # ImportError fails the test


def test_the_readme_links_nothing_outside_the_repo():
    for target in re.findall(r"\]\(([^)]+)\)", README):
        assert "://" not in target, target
        assert (ROOT / target.split("#")[0]).exists(), target
    hosts = re.findall(r"https?://([^/\s:`'\"]+)", README)
    assert set(hosts) <= {"127.0.0.1", "SERVER", "localhost"}, hosts

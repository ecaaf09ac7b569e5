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
    # SERVER, SERVER1..: placeholders for the reader's own machines.
    placeholders = {h for h in hosts if re.fullmatch(r"SERVER\d?", h)}
    assert set(hosts) - placeholders <= {"127.0.0.1", "localhost"}, hosts


DESIGN = (ROOT / "docs" / "DESIGN.md").read_text(encoding="utf-8")


def variables_orch_reads() -> set[str]:
    """ORCH_* names the code reads: literals, and the flags' env("NAME") fallbacks."""
    names: set[str] = set()
    for path in (ROOT / "orch").rglob("*.py"):
        source = path.read_text(encoding="utf-8")
        names.update(re.findall(r"[\"'](ORCH_[A-Z][A-Z_]*)[\"']", source))
        names.update("ORCH_" + n for n in re.findall(r"\benv\(\"([A-Z][A-Z_]*)\"", source))
    return names


def test_every_orch_variable_the_docs_name_is_read_by_the_code():
    read = variables_orch_reads()
    assert {"ORCH_DATA_DIR", "ORCH_META", "ORCH_ADDR", "ORCH_TASK_DIR"} <= read
    for doc in (README, DESIGN):
        named = set(re.findall(r"\bORCH_[A-Z][A-Z_]*[A-Z]\b", doc))
        # ORCH_META_<KEY> names are made per meta key (examples in the docs).
        named = {n for n in named if not n.startswith("ORCH_META_")}
        assert named <= read, sorted(named - read)
    assert "ORCH_META_" in (ROOT / "orch" / "agent" / "taskenv.py").read_text()


def test_the_design_doc_points_at_files_inside_the_repo_only():
    # Markdown links and `path/file.md` mentions alike: both must resolve
    # inside this repository (a reader of the repo has nothing else).
    targets = re.findall(r"\]\(([^)]+)\)", DESIGN)
    targets += re.findall(r"`([^`\s]+/[^`\s]+\.md)`", DESIGN)
    assert "://" not in DESIGN
    for target in targets:
        path = (ROOT / target.split("#")[0]).resolve()
        assert path.is_relative_to(ROOT) and path.exists(), target

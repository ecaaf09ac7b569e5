"""Build dist/orch.pyz: a shiv zipapp holding orch and every dependency.

    python build/make_pyz.py [--output dist/orch.pyz]

The sources are copied to a temporary directory first, so that setuptools'
build directory never lands in the checkout and a module deleted from the tree
cannot linger in the zipapp. Dependencies are installed with the versions
pinned in requirements-dev.txt; psutil's native extension comes in as the
platform wheel pip picks for this machine.

Every module goes in compiled as well (``__pycache__/*.pyc``, hash-checked,
for the building interpreter's version): shiv leaves .pyc files out, and the
unpacked site-packages then had none, so every server, agent and launcher
compiled every module it imported at each start (~0.2 s of CPU each) where
``PYTHONDONTWRITEBYTECODE`` is set, as it is on this project's machines.
Hash-checked rather than timestamped because unpacking does not keep
modification times; a source that differs from its pyc is simply recompiled.
"""

from __future__ import annotations

import argparse
import compileall
import os
import py_compile
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = ROOT / "dist" / "orch.pyz"
ENTRY_POINT = "orch.__main__:main"
SHEBANG = "/usr/bin/env python3"
SOURCES = ("setup.py", "orch")
MAIN_SCRIPT = ROOT / "build" / "pyz_main.py"


def copy_sources(dest: Path) -> None:
    for name in SOURCES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(src, dest / name)


def install(src: Path, site_packages: Path) -> None:
    """orch and its dependencies into a bare site-packages directory."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--root-user-action=ignore",
            "--no-compile",
            "--target",
            str(site_packages),
            "--constraint",
            str(ROOT / "requirements-dev.txt"),
            str(src),
        ],
        check=True,
    )
    # direct_url.json records the temporary source path: drop it so that equal
    # sources give an equal zipapp (and shiv's content-hash build id).
    for record in site_packages.glob("*.dist-info/direct_url.json"):
        record.unlink()


def compile_pycs(site_packages: Path) -> None:
    """Every module compiled next to its source, checked by hash (see above)."""
    ok = compileall.compile_dir(
        site_packages,
        quiet=2,
        workers=0,  # one process per CPU
        invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH,
    )
    if not ok:
        # A module that does not compile here would not import either; shiv
        # never compiled it, so it may be dead code of a dependency: say so.
        print("make_pyz: some modules did not compile; they are left without a pyc")


def zipapp(site_packages: Path, output: Path) -> None:
    tmp_output = output.with_name(output.name + ".tmp")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "shiv",
            "--site-packages",
            str(site_packages),
            "--entry-point",
            ENTRY_POINT,
            "--output-file",
            str(tmp_output),
            "--python",
            SHEBANG,
            "--compressed",
            "--reproducible",
        ],
        check=True,
    )
    replace_main(tmp_output, site_packages)
    os.replace(tmp_output, output)


def replace_main(path: Path, site_packages: Path) -> None:
    """Put build/pyz_main.py in as the zipapp's `__main__.py` (a fast path to
    an unpacked build, else shiv's bootstrap behind a check of the extraction
    dir and a clean-up of old builds' dirs), and add the compiled modules.

    A zip cannot replace a member in place, so the archive is written anew,
    each member with its original date (the build stays reproducible).
    """
    data = path.read_bytes()
    shebang = data[: data.index(b"PK")]  # shiv's `#!...` line before the zip
    main = MAIN_SCRIPT.read_bytes()
    rewritten = path.with_name(path.name + ".main")
    with zipfile.ZipFile(path) as old, open(rewritten, "wb") as f:
        f.write(shebang)
        with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_DEFLATED) as new:
            for info in old.infolist():
                new.writestr(info, main if info.filename == "__main__.py" else old.read(info))
            date = old.getinfo("__main__.py").date_time
            for pyc in sorted(site_packages.rglob("*.pyc")):
                member = zipfile.ZipInfo(f"site-packages/{pyc.relative_to(site_packages)}", date)
                member.external_attr = 0o644 << 16
                new.writestr(member, pyc.read_bytes(), compress_type=zipfile.ZIP_DEFLATED)
    os.chmod(rewritten, 0o755)
    os.replace(rewritten, path)


def build(output: Path) -> Path:
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="orch-pyz-") as tmp:
        src, site_packages = Path(tmp, "src"), Path(tmp, "site-packages")
        src.mkdir()
        copy_sources(src)
        install(src, site_packages)
        compile_pycs(site_packages)
        zipapp(site_packages, output)
    return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the orch zipapp with shiv.")
    parser.add_argument(
        "--output",
        type=Path,
        default=DEFAULT_OUTPUT,
        help="where to write the zipapp (default %(default)s)",
    )
    args = parser.parse_args(argv)
    try:
        path = build(args.output.resolve())
    except subprocess.CalledProcessError as exc:
        print(f"make_pyz: {exc.cmd[2]} failed with exit code {exc.returncode}", file=sys.stderr)
        return 1
    print(f"built {path} ({path.stat().st_size // 1024} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

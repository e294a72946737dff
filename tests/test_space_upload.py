"""The Space as uploaded: its staged folder, front matter and requirements, and that its app.py starts there."""

import pytest
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from space.upload import PACKAGE_LINE, main

pytestmark = pytest.mark.slow  # real subprocesses / servers: seconds each


def front_matter(text: str) -> dict:
    head = text.split("---\n")[1]
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in head.splitlines()) if _ and k[0] != " "}


def test_staged_space_is_complete_and_starts(tmp_path):
    assert main(["--stage-only", str(tmp_path), "--package", "mslddm[space]==0.1.0"]) == 0
    files = {str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()}
    assert {"app.py", "README.md", "requirements.txt", "space/__init__.py", "space/handlers.py", "space/render.py",
            "space/ui.py"} <= files
    meta = front_matter((tmp_path / "README.md").read_text())
    assert meta["sdk"] == "gradio" and meta["sdk_version"].startswith("6.") and meta["app_file"] == "app.py"
    assert "suggested_hardware" in meta and "models" in meta
    requirements = (tmp_path / "requirements.txt").read_text()
    assert "mslddm[space]==0.1.0" in requirements and PACKAGE_LINE not in requirements
    # The Space's app.py finds its `space` package next to it, wherever it runs from; mslddm comes from the
    # requirements there, from a folder holding only the package here.
    (tmp_path.parent / "site").mkdir(exist_ok=True)
    link = tmp_path.parent / "site" / "mslddm"
    if not link.exists():
        link.symlink_to(ROOT / "mslddm")
    env = {**os.environ, "PYTHONPATH": str(link.parent)}
    out = subprocess.run([sys.executable, str(tmp_path / "app.py"), "--help"], cwd=tmp_path.parent, env=env,
                         capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "--pipeline" in out.stdout and "MSLDDM_MAX_DURATION" in out.stdout

"""Uploads the demo as a Hugging Face Space, in one command (log in first: `hf auth login`, or set HF_TOKEN):

    python space/upload.py --repo-id OWNER/NAME            # create or update the Space
    python space/upload.py --stage-only /tmp/space          # only write the folder that would be uploaded

The Space holds ``app.py``, the ``space`` package (with its examples), ``space/README.md`` as ``README.md`` (the
Space's front matter) and ``space/requirements.txt`` as ``requirements.txt``, whose ``mslddm`` line is pinned to
the commit checked out here (or replaced by ``--package``). Files no longer in the stage are deleted from the Space.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SPACE = ROOT / "space"
PACKAGE_LINE = "mslddm[space] @ git+https://github.com/mslddm/mslddm.git"


def pinned_package() -> str:
    """The requirements line of this package at the checked-out commit (unpinned outside a git checkout)."""
    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                                check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return PACKAGE_LINE
    return f"{PACKAGE_LINE}@{commit}"


def stage(folder: Path, package: str) -> Path:
    """Writes the Space's files into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "app.py", folder / "app.py")
    (folder / "space").mkdir(exist_ok=True)
    for name in ("__init__.py", "handlers.py", "render.py", "ui.py"):
        shutil.copy(SPACE / name, folder / "space" / name)
    if (SPACE / "examples").is_dir():
        shutil.copytree(SPACE / "examples", folder / "space" / "examples", dirs_exist_ok=True)
    shutil.copy(SPACE / "README.md", folder / "README.md")
    requirements = (SPACE / "requirements.txt").read_text()
    if PACKAGE_LINE not in requirements:
        raise SystemExit(f"space/requirements.txt has no line {PACKAGE_LINE!r} to pin.")
    (folder / "requirements.txt").write_text(requirements.replace(PACKAGE_LINE, package))
    return folder


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repo-id", help="the Space, OWNER/NAME")
    p.add_argument("--package", default=None, help="requirements line that installs mslddm (default: this commit)")
    p.add_argument("--private", action="store_true", help="create the Space private")
    p.add_argument("--token", default=None, help="Hugging Face token (default: the logged-in one or HF_TOKEN)")
    p.add_argument("--stage-only", metavar="FOLDER", help="write the Space's files to FOLDER and upload nothing")
    args = p.parse_args(argv)
    package = args.package or pinned_package()
    if args.stage_only:
        print(f"staged {stage(Path(args.stage_only), package)}")
        return 0
    if not args.repo_id:
        p.error("--repo-id is required (or --stage-only FOLDER)")

    from huggingface_hub import HfApi

    api = HfApi(token=args.token)
    repo = api.create_repo(args.repo_id, repo_type="space", space_sdk="gradio", private=args.private or None,
                           exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        stage(Path(tmp), package)
        api.upload_folder(repo_id=repo.repo_id, repo_type="space", folder_path=tmp, delete_patterns=["*"],
                          commit_message=f"Upload the mslddm demo ({package.rsplit('@', 1)[-1][:12]})")
    print(f"https://huggingface.co/spaces/{repo.repo_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

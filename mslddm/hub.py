"""Hugging Face Hub plumbing: resolving a folder or repo id, writing model cards, uploading pipeline folders."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, Optional

HUB_KWARGS = ("cache_dir", "revision", "token", "local_files_only", "force_download", "proxies")


class PipelineLoadError(ValueError):
    """A pipeline could not be found or loaded; the message is one sentence naming the path or id and what to do."""


def resolve_pretrained_path(name_or_path: str | os.PathLike, **hub_kwargs) -> str:
    """Returns a local folder for ``name_or_path``: the folder itself, or a snapshot of the Hub repo id.

    diffusers' own Hub download checks that every component class comes from diffusers or transformers and
    refuses mslddm's, so the snapshot is fetched here first and diffusers only ever sees a local folder.
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise PipelineLoadError(f"{str(path)!r} is a folder but holds no model_index.json: not a pipeline "
                                    "folder.")
        return str(path)
    name = str(name_or_path)
    parent = path.parent
    looks_local = str(parent) not in ("", ".") and parent.is_dir()
    if name.count("/") != 1 or name.startswith((".", "/", "~")) or looks_local:
        # A path (an 'owner/name' whose owner is a local folder is a mistyped path, not a repo id).
        hint = ""
        if parent.is_dir():
            found = sorted(p.name for p in parent.iterdir() if (p / "model_index.json").is_file())
            hint = f" {str(parent)!r} holds the pipelines {found}." if found else ""
        raise PipelineLoadError(f"Pipeline folder {name!r} does not exist.{hint} Pass an existing pipeline folder "
                                "or a Hub repo id of the form 'owner/name'.")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    kwargs = {k: v for k, v in hub_kwargs.items() if k in HUB_KWARGS and v is not None}
    try:
        return snapshot_download(name, **kwargs)
    except LocalEntryNotFoundError:
        raise PipelineLoadError(
            f"Pipeline {name!r} is not in the local Hugging Face cache and the Hub cannot be reached (offline?): "
            f"download it once where there is a network (huggingface-cli download {name}) or pass a local "
            "pipeline folder.") from None
    except RepositoryNotFoundError:
        raise PipelineLoadError(f"There is no Hub repo {name!r} (or it is private: log in with "
                                "huggingface-cli login).") from None
    except (HfHubHTTPError, OSError) as error:
        raise PipelineLoadError(f"Pipeline {name!r} could not be downloaded: {error}") from None


def model_card(
    *,
    repo_id: Optional[str],
    stem_names: list[str],
    sample_rate: int,
    parameters: Mapping[str, int],
    extra_sections: Optional[Mapping[str, str]] = None,
    base_model: Optional[str] = None,
    kind: str = "msldm",
) -> str:
    """Markdown model card (with Hub front matter) showing how to use the pipeline through mslddm. ``kind``:
    ``msldm``, or one of the paper's baselines ``isldm`` / ``mixldm`` (for which ``stem_names`` are the stems the
    mixes were made of)."""
    from mslddm.kinds import get_kind

    card = get_kind(kind).card
    repo = repo_id or "path/to/this/folder"
    front = {
        "library_name": "mslddm",
        "license": "mit",
        "pipeline_tag": "audio-to-audio",  # no text prompt: stems in (partial generation), stems out
        "tags": ["music", "stems", *card.tags, "latent-diffusion", "mslddm"],
    }
    if base_model:
        front["base_model"] = base_model
    front_matter = "\n".join(f"{k}: {json.dumps(v)}" for k, v in front.items())
    params = "\n".join(f"| {name} | {count:,} |" for name, count in parameters.items())
    stems = ", ".join(stem_names)
    sections = "".join(f"\n## {title}\n\n{body.strip()}\n" for title, body in (extra_sections or {}).items())
    fill = dict(stems=stems, sample_rate=sample_rate, repo=repo, stem=stem_names[0], num_stems=len(stem_names))
    return f"""---
{front_matter}
---

# {card.title.format(**fill)}

{card.intro.format(**fill)}

## Usage

```bash
pip install mslddm
{card.cli.format(**fill)}
```

```python
{card.usage.format(**fill)}
```

## Components

| component | parameters |
|---|---|
{params}
{sections}"""


def adapter_card(*, base_pipeline: str | None, config: Mapping, size_bytes: int,
                 extra_sections: Mapping[str, str] | None = None) -> str:
    """Markdown model card (with Hub front matter) of a LoRA adapter of a pipeline's UNet: what it adapts and how
    to load it (``config`` is its ``adapter_config.json``)."""
    base = base_pipeline or "path/to/the/base/pipeline"
    front = {"library_name": "mslddm", "license": "mit", "pipeline_tag": "audio-to-audio",
             "tags": ["music", "stems", "lora", "mslddm"]}
    if base_pipeline and "/" in base_pipeline and not Path(base_pipeline).exists():
        front["base_model"] = base_pipeline  # a Hub id; a local folder means nothing there
    front_matter = "\n".join(f"{k}: {json.dumps(v)}" for k, v in front.items())
    sections = "".join(f"\n## {title}\n\n{body.strip()}\n" for title, body in (extra_sections or {}).items())
    targets = ", ".join(f"`{t}`" for t in config.get("target_modules", []))
    return f"""---
{front_matter}
---

# LoRA adapter of `{base}`

A [mslddm](https://github.com/mslddm/mslddm) LoRA adapter: low-rank updates (rank {config.get("r")}, alpha
{config.get("lora_alpha")}) of the UNet of the pipeline `{base}` ({", ".join(config.get("stem_names", []))}), on
{targets}. {config.get("parameters", 0):,} parameters, {size_bytes / 1e6:.2f} MB ({config.get("dtype")}); the
base pipeline's weights are not in it.

## Usage

```bash
mslddm generate --pipeline {base} --lora path/to/this/folder --lora-scale 1.0
```

```python
from mslddm import MultiSourceLatentPipeline

pipe = MultiSourceLatentPipeline.from_pretrained("{base}")
pipe.load_lora_weights("path/to/this/folder", scale=1.0)  # strength: 0 is the base pipeline
out = pipe(audio_length_in_s=12.0)
pipe.unload_lora_weights()  # the base pipeline again, bit for bit
```
{sections}"""


def public_name(name_or_path) -> str:
    """A pipeline as files meant for others name it: a local folder by its name (its full path means nothing
    elsewhere), a Hub repo id as it is."""
    path = Path(str(name_or_path))
    return path.name if path.is_absolute() or path.exists() else str(name_or_path)


def push_folder_to_hub(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    private: Optional[bool] = None,
    token: Optional[str] = None,
    commit_message: str = "Upload mslddm pipeline",
    api: Any = None,
) -> str:
    """Creates ``repo_id`` if needed and uploads ``folder`` as it is (its model card included)."""
    from huggingface_hub import HfApi

    api = api or HfApi(token=token)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=commit_message)
    return repo_id


DEFAULT_HUB_PIPELINE = "mslddm/mslddm-synth-small"
BUNDLED_PIPELINE_NAME = "mslddm-synth-small"


def default_pipeline() -> str:
    """The pipeline used when none is named: ``$MSLDDM_PIPELINE``, else the one bundled in this repository's
    ``pipelines/`` folder (next to the package in a source checkout), else the Hub repo of the same pipeline."""
    env = os.environ.get("MSLDDM_PIPELINE")
    if env:
        return env
    bundled = Path(__file__).resolve().parent.parent / "pipelines" / BUNDLED_PIPELINE_NAME
    if (bundled / "model_index.json").is_file():
        return str(bundled)
    return DEFAULT_HUB_PIPELINE

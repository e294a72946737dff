"""Write an evaluation's results: ``results.json``, ``results.md`` (tables) and bar charts (PNG)."""

from __future__ import annotations

import json
import math
from pathlib import Path

COHERENCE_ROWS = (
    ("generated", "generated"),
    ("reference", "real (aligned stems)"),
    ("reference_shuffled", "real, stems shuffled across songs (chance)"),
)


def _fmt(value) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def markdown(results: dict) -> str:
    """The results as Markdown: protocol, FAD per stem and mix, sub-FAD per subset, coherence."""
    p = results["protocol"]
    out = [
        "# Evaluation",
        "",
        (
            f"Pipeline `{p.get('pipeline') or '?'}`, data `{p['data']}` (split `{p['split']}`), embedder "
            f"`{p['embedder']['embedder']}` ({p['embedder'].get('model', '')} weights sha256 "
            f"{p['embedder']['weights_sha256'][:12]})."
        ),
        (
            f"{p['clip_seconds']} s clips, {p['num_inference_steps']} {p['sampler']} steps, churn {p['s_churn']}, "
            f"seed {p['seed']}. Chunks: {p['chunks']}. Audio: {p['audio']}. Seeds: {p['seeds']}."
        ),
    ]
    total, partial = results.get("total") or {}, results.get("partial") or {}
    out += quality_tables(results)
    if total:
        labels = list(total["fad"])
        out += [
            "",
            (
                f"## Total generation: FAD ({total['num_generated']} generated vs "
                f"{total['num_reference_chunks']} reference chunks, lower is better)"
            ),
            "",
            _table(labels, [[_fmt(total["fad"][k]) for k in labels]]),
        ]
        coherence = total["coherence"]
        out += [
            "",
            "## Coherence (total generation)",
            "",
            (
                "Rhythm: onset-envelope correlation with the drums; harmony: chroma cosine with the bass "
                "(closer to the real aligned stems is better, the shuffled row is chance); silence: fraction of "
                "stems that are silent; similarity: spectrogram cosine between stems (near 1: the stems are "
                "copies of each other)."
            ),
            "",
        ]
        rows = [
            [name]
            + [_fmt(coherence[key][f"{m}_mean"]) for m in ("rhythm", "harmony", "silence_rate", "similarity")]
            for key, name in COHERENCE_ROWS
            if key in coherence
        ]
        out.append(_table(["set", "rhythm", "harmony", "silence rate", "similarity"], rows))
        metrics = (
            ("rhythm", "Rhythmic agreement with the drums"),
            ("harmony", "Harmonic agreement with the bass"),
            ("silence_rate", "Silence rate"),
            ("similarity", "Stem similarity"),
        )
        sets = [(key, name) for key, name in COHERENCE_ROWS if key in coherence]
        for metric, title in metrics:
            stems = list(coherence[sets[0][0]][metric]) if sets else []
            if stems:
                rows = [[name] + [_fmt(coherence[key][metric].get(s)) for s in stems] for key, name in sets]
                out += [
                    "",
                    f"{title}, per stem{' pair' if metric == 'similarity' else ''}:",
                    "",
                    _table(["set"] + stems, rows),
                ]
    if partial:
        labels = list(partial["sub_fad"])
        out += [
            "",
            (
                f"## Partial generation: sub-FAD ({partial['num_reference_chunks']} chunks with every "
                "stem, lower is better)"
            ),
            "",
            _table(
                labels + ["overall"],
                [[_fmt(partial["sub_fad"][k]) for k in labels] + [_fmt(partial["overall"])]],
            ),
        ]
    return "\n".join(out) + "\n"


LEVEL_COLUMNS = (
    ("mean_dbfs", "mean dBFS"),
    ("share_below_silence", "share < -50 dBFS"),
    ("frame_energy_range_db", "frame-energy range (dB)"),
    ("low_energy_share", "energy < 250 Hz"),
)


def quality_rows(results: dict) -> list[tuple[str, dict]]:
    """``(row name, FAD per stem and mix)`` for the floor, the VAE reconstruction and the total generation."""
    rows = []
    for key, name in (("floor", "real training chunks (floor)"), ("reconstruction", "VAE reconstruction"),
                      ("total", "total generation")):
        if (results.get(key) or {}).get("fad"):
            rows.append((name, results[key]["fad"]))
    return rows


def quality_tables(results: dict) -> list[str]:
    """The side-by-side table (FAD of floor, reconstruction, generation against the same test chunks, with each
    mix FAD as a multiple of the floor's) and the level statistics of real, reconstructed and generated stems."""
    rows = quality_rows(results)
    out = []
    if rows:
        labels = list(rows[0][1])
        floor = (results.get("floor") or {}).get("fad", {}).get("mix")
        table = [[name] + [_fmt(f.get(k)) for k in labels] + [_fmt(f["mix"] / floor) if floor else "n/a"]
                 for name, f in rows]
        out += ["", "## Quality against the floor: FAD vs the test chunks (lower is better)", "",
                _table(["audio"] + labels + ["mix / floor"], table)]
    levels = []
    real = next((results[k].get("levels_reference") for k in ("reconstruction", "total")
                 if (results.get(k) or {}).get("levels_reference")), None)
    for name, block in (("real (test)", real), ("real (train)", (results.get("floor") or {}).get("levels")),
                        ("reconstruction", (results.get("reconstruction") or {}).get("levels")),
                        ("generation", (results.get("total") or {}).get("levels"))):
        if block:
            levels += [[name, part] + [_fmt(v[key]) for key, _ in LEVEL_COLUMNS] for part, v in block.items()]
    if levels:
        out += ["", "## Levels (per stem and mix)", "",
                "Mean RMS level, share of clips under -50 dBFS, frame-energy range (95th - 10th percentile of 46-ms "
                "frame energies: small means a noise floor fills the gaps) and share of energy under 250 Hz.", "",
                _table(["audio", "part"] + [title for _, title in LEVEL_COLUMNS], levels)]
    return out


def bar_charts(results: dict, out_dir: Path) -> list[Path]:
    """One PNG per table; returns the files written (none when matplotlib is missing)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    written = []

    def save(fig, name):
        path = out_dir / name
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)

    total, partial = results.get("total") or {}, results.get("partial") or {}
    rows = quality_rows(results)
    if len(rows) > 1:
        import numpy as np

        labels = list(rows[0][1])
        fig, ax = plt.subplots(figsize=(7, 3.5))
        width = 0.8 / len(rows)
        for j, (name, fads) in enumerate(rows):
            ax.bar(np.arange(len(labels)) + j * width, [fads[k] for k in labels], width, label=name)
        ax.set_xticks(np.arange(len(labels)) + 0.4 - width / 2, labels)
        ax.set_ylabel("FAD vs test (lower is better)")
        ax.legend(fontsize=8)
        save(fig, "fad_quality.png")
    if total:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.bar(list(total["fad"]), list(total["fad"].values()), color="tab:blue")
        ax.set_ylabel("FAD (lower is better)")
        ax.set_title("Total generation")
        save(fig, "fad_total.png")
        fig, axes = plt.subplots(1, 4, figsize=(13, 3.5))
        for ax, metric, title in zip(
            axes,
            ("rhythm_mean", "harmony_mean", "silence_rate_mean", "similarity_mean"),
            ("rhythm agreement", "harmony agreement", "silence rate", "stem similarity"),
        ):
            keys = [k for k, _ in COHERENCE_ROWS if k in total["coherence"]]
            ax.bar(
                ["generated", "real", "shuffled"][: len(keys)],
                [total["coherence"][k][metric] for k in keys],
                color=["tab:blue", "tab:green", "tab:gray"],
            )
            ax.set_title(title)
            ax.axhline(0.0, color="black", linewidth=0.5)
            if metric in ("silence_rate_mean", "similarity_mean"):
                ax.set_ylim(0.0, 1.0)
        save(fig, "coherence.png")
    if partial:
        labels = list(partial["sub_fad"]) + ["overall"]
        values = list(partial["sub_fad"].values()) + [partial["overall"]]
        fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(labels) + 2), 3.5))
        ax.bar(labels, values, color=["tab:orange"] * (len(labels) - 1) + ["tab:red"])
        ax.set_ylabel("sub-FAD (lower is better)")
        ax.set_title("Partial generation")
        save(fig, "subfad.png")
    return written


def write_report(results: dict, out_dir: str | Path) -> list[Path]:
    """Write ``results.json``, ``results.md`` and the charts into ``out_dir``; returns the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / "results.json", out_dir / "results.md"
    json_path.write_text(json.dumps(results, indent=1, allow_nan=True))
    md_path.write_text(markdown(results))
    return [json_path, md_path, *bar_charts(results, out_dir)]

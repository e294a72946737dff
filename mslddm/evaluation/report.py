"""Write an evaluation's results: ``results.json``, ``results.md`` (tables) and bar charts (PNG)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from ..stems import SILENCE_DBFS
from .distances import intervals_overlap

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
        out += _total_section(total)
    if total and total.get("coherence"):
        out += _coherence_section(total["coherence"])
    out += _separation_section(results.get("separation") or {})
    if partial:
        out += _partial_section(partial)
    return "\n".join(out) + "\n"


def _total_section(total: dict) -> list[str]:
    """Total generation: FAD per part, its intervals and KAD, the spectral shape, and the result's note."""
    labels = list(total["fad"])
    out = [
        "",
        (
            f"## Total generation: FAD ({total['num_generated']} generated vs "
            f"{total['num_reference_chunks']} reference chunks, lower is better)"
        ),
        "",
        _table(labels, [[_fmt(total["fad"][k]) for k in labels]]),
    ]
    if total.get("fad_interval"):
        out += ["", "FAD [95 % interval over clips] and KAD x100 [interval]:", "",
                _table(["", *labels], [["FAD", *[_interval(total["fad_interval"].get(k)) for k in labels]],
                                       ["KAD", *[_interval(total["kad"].get(k)) for k in labels]]])]
    if total.get("spectral"):
        names = list(total["spectral"])
        ref = total.get("spectral_reference") or {}
        out += ["", "Spectral shape (generated / real on the same chunks): share of power above 4 kHz (%), "
                "centroid (Hz):", "",
                _table(["", *names], [
                    ["> 4 kHz %", *[f"{_fmt(100 * total['spectral'][n]['high_share'])} / "
                                    f"{_fmt(100 * ref.get(n, {}).get('high_share', float('nan')))}" for n in names]],
                    ["centroid", *[f"{_fmt(total['spectral'][n]['centroid_hz'])} / "
                                   f"{_fmt(ref.get(n, {}).get('centroid_hz', float('nan')))}" for n in names]]])]
    if total.get("note"):
        out += ["", f"({total['note']}.)"]
    return out


def _coherence_section(coherence: dict) -> list[str]:
    """Coherence of total generation: the means per set, then each metric per stem (pair)."""
    out = [
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
    return out


def _separation_section(separation: dict) -> list[str]:
    """SI-SDR improvement per stem (nothing without separation results)."""
    out = []
    if separation:
        names = list(separation["si_sdri"])
        out += ["", f"## Separation: SI-SDR improvement over the mixture (dB, {separation['num_chunks']} mixtures of "
                "test chunks with every stem, higher is better"
                + (f"; {separation['method']} separator, Euler x {separation['num_inference_steps']}, churn "
                   f"{separation['s_churn']:g}" if "method" in separation else "") + ")", "",
                _table(["", *names, "mean"],
                       [["SI-SDRi"] + [_fmt(separation["si_sdri"][n]) for n in names] + [_fmt(separation["si_sdri_mean"])],
                        ["SI-SDR separated"] + [_fmt(separation["si_sdr"][n]) for n in names] + [""],
                        ["SI-SDR of the mixture"] + [_fmt(separation["si_sdr_mixture"][n]) for n in names] + [""]])]
    return out


def _partial_section(partial: dict) -> list[str]:
    """Partial generation: sub-FAD per subset and overall."""
    labels = list(partial["sub_fad"])
    out = [
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
    return out


LEVEL_COLUMNS = (
    ("mean_dbfs", "mean dBFS"),
    ("share_below_silence", f"share < {SILENCE_DBFS:g} dBFS"),
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
                f"Mean RMS level, share of clips under {SILENCE_DBFS:g} dBFS, frame-energy range (95th - 10th "
                "percentile of 46-ms frame energies: small means a noise floor fills the gaps) and share of energy "
                "under 250 Hz.", "",
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
            ax.bar(np.arange(len(labels)) + j * width, [fads.get(k, float("nan")) for k in labels], width,
                   label=name)
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
    if total and total.get("coherence"):
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


# ----------------------------------------------------------------------------------------------------------------
# Several models on one protocol (mslddm compare)
# ----------------------------------------------------------------------------------------------------------------
def _interval(block: dict | None) -> str:
    """``value [low, high]`` of a bootstrap block (:mod:`mslddm.evaluation.distances`), or n/a."""
    if not block:
        return "n/a"
    return f"{_fmt(block['value'])} [{_fmt(block['low'])}, {_fmt(block['high'])}]"


def interval_rows(comparison: dict) -> list[list[str]]:
    """Rows of mix FAD and KAD with their 95 % intervals (floor, reconstructions, generations), each generation
    marked against the first model's: "overlaps" when the intervals overlap (a difference these clips do not
    show), else "lower" / "higher"."""
    entries, floor = [], None
    for name, model in comparison["models"].items():
        res = model["results"]
        floor = floor or ((res.get("floor") or {}).get("fad_interval") and res["floor"])
        if (res.get("reconstruction") or {}).get("fad_interval"):
            entries.append((f"{name}: VAE reconstruction", res["reconstruction"], False))
        if (res.get("total") or {}).get("fad_interval"):
            entries.append((name, res["total"], True))
    if floor:
        entries.insert(0, ("real training chunks (floor)", floor, False))
    first = next((block for _, block, generated in entries if generated), None)
    rows = []
    for name, block, generated in entries:
        fad_mix, kad_mix = block["fad_interval"].get("mix"), (block.get("kad") or {}).get("mix")
        if not generated or block is first:
            mark = "" if not generated else "(the first model)"
        else:
            ref = first["fad_interval"]["mix"]
            mark = ("overlaps" if intervals_overlap(fad_mix, ref)
                    else "lower" if fad_mix["value"] < ref["value"] else "higher")
        rows.append([name, _interval(fad_mix), _interval(kad_mix), mark])
    return rows


def _floor_fad(models: dict) -> dict | None:
    """The real-data floor's FAD per part: the first model's that measured it (every model's is the same)."""
    floor = None
    for model in models.values():
        floor = floor or (model["results"].get("floor") or {}).get("fad")
    return floor


def _comparison_rows(comparison: dict) -> tuple[list[str], list[tuple[str, str, dict, float | None]]]:
    """Stem labels and ``(row name, kind, FAD per part, sub-FAD overall)``: the floor once, each model's VAE
    reconstruction and generation."""
    models = comparison["models"]
    labels = [*comparison["protocol"]["stem_names"], "mix"]
    rows, floor = [], _floor_fad(models)
    if floor:
        rows.append(("real training chunks (floor)", "data", floor, None))
    for name, model in models.items():
        res = model["results"]
        if (res.get("reconstruction") or {}).get("fad"):
            rows.append((f"{name}: VAE reconstruction", model["kind"], res["reconstruction"]["fad"], None))
        if (res.get("total") or {}).get("fad"):
            rows.append((name, model["kind"], res["total"]["fad"], (res.get("partial") or {}).get("overall")))
    return labels, rows


def comparison_markdown(comparison: dict) -> str:
    """The comparison as Markdown: FAD per stem and mix (floor, reconstructions, generations), sub-FAD per subset,
    coherence and empty-stem rate, size and speed."""
    p, models = comparison["protocol"], comparison["models"]
    steps = "the sampler's own" if p.get("num_inference_steps") is None else p["num_inference_steps"]
    churn = "the sampler's own" if p.get("s_churn") is None else p["s_churn"]
    sampling = {name: m["sampling"] for name, m in models.items() if m.get("sampling")}
    sampler = (f"sampler {p['sampler']}, steps {steps}, churn {churn}" if len(
        {json.dumps(s, sort_keys=True) for s in sampling.values()}) <= 1 else "each model's own sampler ("
        + "; ".join(f"{name}: {s['sampler']} x {s['num_inference_steps']}, churn {s['s_churn']:g}"
                    for name, s in sampling.items()) + ")")
    out = ["# Model comparison", "",
           f"Data `{p['data']}` (split `{p['split']}`), embedder `{p['embedder']['embedder']}` "
           f"({p['embedder'].get('model', '')}, weights sha256 {p['embedder']['weights_sha256'][:12]}); "
           f"{p['num_clips']} clips of {p['clip_seconds']} s for total generation, {p['num_chunks']} chunks with "
           f"every stem for partial generation; {sampler}, seed {p['seed']}. "
           "Every model on the same chunks and seeds.", ""]
    out += _comparison_fad_section(comparison)
    out += _comparison_interval_section(comparison)
    out += _comparison_sub_fad_section(models)
    out += _comparison_coherence_section(models)
    out += _comparison_separation_section(models)
    out += _comparison_size_section(models)
    return "\n".join(out) + "\n"


def _comparison_fad_section(comparison: dict) -> list[str]:
    """FAD per stem and mix of every row (floor, reconstructions, generations), and the mix against the floor."""
    labels, rows = _comparison_rows(comparison)
    floor = (_floor_fad(comparison["models"]) or {}).get("mix")
    table = [[name, kind] + [_fmt(f.get(k)) for k in labels]
             + [_fmt(f["mix"] / floor) if floor and f.get("mix") is not None else "n/a", _fmt(sub)]
             for name, kind, f, sub in rows]
    return ["## FAD against the test chunks (lower is better)", "",
            "Per stem and on the mix for total generation; a mixture-only model (MixLDM) has a mix only. "
            "sub-FAD overall: the mean over the partial-generation subsets (models that take stems).", "",
            _table(["audio", "model"] + labels + ["mix / floor", "sub-FAD overall"], table)]


def _comparison_interval_section(comparison: dict) -> list[str]:
    """Mix FAD and KAD with their intervals, each model marked against the first."""
    out, models = [], comparison["models"]
    intervals = interval_rows(comparison)
    if intervals:
        first = next(iter(models))
        out += ["", "## Mix FAD and KAD with 95 % intervals", "",
                f"Bootstrap over clips (the generated and the reference set resampled alike); KAD x100. The last "
                f"column compares each model's mix FAD with {first}'s: *overlaps* means these clips do not show "
                "a difference.", "", _table(["audio", "mix FAD [95 %]", "mix KAD [95 %]", f"vs {first}"],
                                             intervals)]
    return out


def _comparison_sub_fad_section(models: dict) -> list[str]:
    """sub-FAD per generated subset of every model that takes stems."""
    out = []
    subsets = []
    for model in models.values():
        for label in (model["results"].get("partial") or {}).get("sub_fad", {}):
            if label not in subsets:
                subsets.append(label)
    if subsets:
        sub_rows = [[name] + [_fmt((m["results"].get("partial") or {}).get("sub_fad", {}).get(s)) for s in subsets]
                    + [_fmt((m["results"].get("partial") or {}).get("overall"))]
                    for name, m in models.items()]
        out += ["", "## Partial generation: sub-FAD per generated subset (lower is better)", "",
                "The subset's stems generated, the other stems given (real), their mix scored against the real "
                "mixes; n/a: the model cannot take stems.", "", _table(["model"] + subsets + ["overall"], sub_rows)]
    return out


def _comparison_coherence_section(models: dict) -> list[str]:
    """Coherence means of each model's total generation, with the real and chance rows."""
    out = []
    coherence_rows, real = [], None
    for name, model in models.items():
        block = (model["results"].get("total") or {}).get("coherence") or {}
        if block.get("generated"):
            g = block["generated"]
            coherence_rows.append([name] + [_fmt(g.get(f"{m}_mean")) for m in
                                            ("rhythm", "harmony", "silence_rate", "similarity")])
            real = real or block
    if coherence_rows:
        for key, title in (("reference", "real (aligned stems)"), ("reference_shuffled", "real, shuffled (chance)")):
            if real.get(key):
                coherence_rows.append([title] + [_fmt(real[key].get(f"{m}_mean")) for m in
                                                 ("rhythm", "harmony", "silence_rate", "similarity")])
        out += ["", "## Coherence of total generation", "",
                "Rhythm: onset correlation with the drums; harmony: chroma cosine with the bass (closer to the real "
                "aligned stems is better; the shuffled row is chance); empty-stem rate: share of generated stems "
                "under the silence level; similarity: spectrogram cosine between stems.", "",
                _table(["model", "rhythm", "harmony", "empty-stem rate", "stem similarity"], coherence_rows)]
    return out


def _comparison_separation_section(models: dict) -> list[str]:
    """SI-SDR improvement of every model that separates."""
    out = []
    separating = {name: m["results"]["separation"] for name, m in models.items()
                  if (m["results"].get("separation") or {}).get("si_sdri")}
    if separating:
        names = list(next(iter(separating.values()))["si_sdri"])
        out += ["", "## Separation: SI-SDR improvement (dB, higher is better)", "",
                _table(["model", *names, "mean"], [[n] + [_fmt(r["si_sdri"].get(k)) for k in names]
                                                   + [_fmt(r["si_sdri_mean"])] for n, r in separating.items()])]
    return out


def _comparison_size_section(models: dict) -> list[str]:
    """Parameters and seconds per song of every model."""
    size_rows = []
    for name, m in models.items():
        t = m.get("timing") or {}
        windows = (f"; {t['windows']} window{'s' if t['windows'] != 1 else ''}, {t['model_evaluations']} evaluations"
                   if t.get("windows") is not None and t.get("model_evaluations") is not None else "")
        speed = (f"{m['seconds_per_song']:.2f} ({t.get('threads')} threads, {t.get('device')}{windows})"
                 if m.get("seconds_per_song") is not None else "n/a")
        size_rows.append([name, m["kind"], f"{m['parameters']['vae']:,}", f"{m['parameters']['unet']:,}",
                          f"{m['parameters']['total']:,}", speed])
    song = next((m["timing"]["song_seconds"] for m in models.values() if m.get("timing")), None)
    return ["", "## Size and speed", "",
            _table(["model", "kind", "VAE parameters", "UNet parameters", "total",
                    f"seconds per {song:g}-s song" if song else "seconds per song"], size_rows)]


def comparison_chart(comparison: dict, path: Path) -> Path | None:
    """Grouped bars: FAD per stem and mix, and sub-FAD overall, one colour per model (and the floor)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import numpy as np
    except ImportError:
        return None
    labels, rows = _comparison_rows(comparison)
    rows = [r for r in rows if not r[0].endswith("VAE reconstruction")]
    categories = labels + ["sub-FAD"]
    fig, ax = plt.subplots(figsize=(max(7, 1.3 * len(categories) + 2), 3.8))
    width = 0.8 / max(1, len(rows))
    for j, (name, _, fads, sub) in enumerate(rows):
        values = [fads.get(k) for k in labels] + [sub]
        values = [float("nan") if v is None else v for v in values]
        ax.bar(np.arange(len(categories)) + j * width, values, width, label=name,
               color="lightgray" if j == 0 and "floor" in name else None)
    ax.set_xticks(np.arange(len(categories)) + 0.4 - width / 2, categories)
    ax.set_ylabel("FAD vs test (lower is better)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_comparison(comparison: dict, out_dir: str | Path) -> list[Path]:
    """Write ``comparison.json``, ``comparison.md`` and ``comparison.png`` into ``out_dir``; returns the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / "comparison.json", out_dir / "comparison.md"
    json_path.write_text(json.dumps(comparison, indent=1, allow_nan=True))
    md_path.write_text(comparison_markdown(comparison))
    chart = comparison_chart(comparison, out_dir / "comparison.png")
    return [json_path, md_path] + ([chart] if chart else [])

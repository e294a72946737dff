"""The comparison marks a difference only where the mix FAD intervals do not overlap."""

from mslddm.evaluation.report import interval_rows


def block(value, low, high):
    return {"value": value, "low": low, "high": high, "draws": 200, "clips": [64, 64]}


def results(fad, kad=None, floor=None):
    out = {"total": {"fad_interval": {"mix": fad}, "kad": {"mix": kad or block(1.0, 0.5, 1.5)}}}
    if floor:
        out["floor"] = {"fad_interval": {"mix": floor}, "kad": {"mix": block(0.1, 0.0, 0.2)}}
    return out


def test_overlapping_intervals_are_not_called_a_difference():
    comparison = {"models": {
        "A": {"results": results(block(11.0, 10.0, 12.0), floor=block(4.0, 3.5, 4.5))},
        "B": {"results": results(block(12.5, 11.5, 13.5))},  # overlaps A's
        "C": {"results": results(block(21.0, 20.0, 22.0))},
        "D": {"results": results(block(6.0, 5.0, 7.0))},
        "E": {"results": {"total": {"fad": {"mix": 3.0}}}},  # evaluated before intervals: no row
    }}
    rows = interval_rows(comparison)
    assert [r[0] for r in rows] == ["real training chunks (floor)", "A", "B", "C", "D"]
    assert [r[-1] for r in rows] == ["", "(the first model)", "overlaps", "higher", "lower"]
    assert rows[1][1] == "11.000 [10.000, 12.000]"

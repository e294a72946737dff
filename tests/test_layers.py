"""The import layers of mslddm (docs/architecture.md), checked on the source with ``ast``.

Every ``import`` counts, at module level and inside functions (a lazy import is still a dependency). A module may
import modules of its own unit and of units on lower layers; units that share a layer are independent of each
other; the bottom layer's modules may import each other. No module imports itself back through others (a circle),
``presets`` imports nothing of mslddm (it is data), and mslddm never imports the repository's other folders.
``from mslddm import Name`` counts as an import of the module that ``mslddm._EXPORTS`` names for ``Name``.
Not seen: ``importlib.import_module`` with a computed name (the command table, the model class tables).
"""

from __future__ import annotations

import ast
import textwrap
from dataclasses import dataclass
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "mslddm"

# Units (a subpackage, or a top-level module) on their layers, lowest first.
LAYERS = [
    ("audio I/O, shared rules and tables",  # kinds: arch-kinds' registry, class paths resolved on first use
     {"mslddm", "audio", "stems", "loudness", "files", "hub", "presets", "kinds", "randomness", "records",
      "measures", "delivery"}),
    ("networks and samplers", {"models", "schedulers"}),
    ("pipelines", {"pipelines"}),
    ("assembly of whole pipelines", {"factory", "devices"}),
    ("converters of released checkpoints", {"conversion"}),
    ("data", {"data"}),
    ("evaluation and training", {"evaluation", "training"}),
    ("command line", {"commands"}),
]
UNIT_OF = {"cli": "commands", "__main__": "commands"}  # top-level modules that belong to a package's unit
IMPORTS_NOTHING = {"presets"}  # data: imports nothing of mslddm
OUTSIDE = {"space", "train", "tests", "benchmarks", "scripts", "app"}  # the repository around mslddm

@dataclass(frozen=True)
class Import:
    source: str  # the importing module, dotted
    target: str  # the imported module, dotted (a name's module when a name is imported)
    where: str  # path:line of the import statement


def module_names(root: Path) -> dict[str, Path]:
    """Every module of the package at ``root``, dotted (``mslddm.models.unet_1d_multisource``) -> path."""
    names = {}
    for path in sorted(root.rglob("*.py")):
        parts = [root.name, *path.relative_to(root).with_suffix("").parts]
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def _exports(root: Path) -> dict[str, str]:
    """``_EXPORTS`` of the package's ``__init__.py`` (public name -> module), if it has one."""
    for node in ast.parse((root / "__init__.py").read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "_EXPORTS" for t in node.targets):
            return ast.literal_eval(node.value)
    return {}


def imports(root: Path) -> list[Import]:
    """Every import in the package at ``root`` of the package itself or of a name in :data:`OUTSIDE`."""
    names, exports, found = module_names(root), _exports(root), []
    for module, path in names.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            where = f"{path.relative_to(root.parent)}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.Import):
                found += [Import(module, alias.name, where) for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([node.module] if node.module else []))
                for alias in node.names:
                    if f"{base}.{alias.name}" in names:  # from package import submodule
                        found.append(Import(module, f"{base}.{alias.name}", where))
                    elif base == root.name and alias.name in exports:  # the package's lazy re-export
                        found.append(Import(module, exports[alias.name], where))
                    else:
                        found.append(Import(module, base, where))
    return [i for i in found if i.target.split(".")[0] in {root.name, *OUTSIDE}]


def unit(module: str) -> str:
    parts = module.split(".")
    return parts[0] if len(parts) == 1 else UNIT_OF.get(parts[1], parts[1])


def layer_violations(found: list[Import], layers=LAYERS) -> list[str]:
    """The imports against the layers' direction, each as a sentence naming the import and the rule."""
    rank = {u: i for i, (_, units) in enumerate(layers) for u in units}
    problems = []
    for imp in found:
        source, target = unit(imp.source), unit(imp.target)
        if imp.target.split(".")[0] in OUTSIDE:
            problems.append(f"{imp.where}: {imp.source} imports {imp.target}: mslddm never imports the repository's "
                            f"other folders ({', '.join(sorted(OUTSIDE))})")
        elif source in IMPORTS_NOTHING:
            problems.append(f"{imp.where}: {imp.source} imports {imp.target}: {source} is data and imports nothing "
                            "of mslddm")
        elif target not in rank or source not in rank:
            missing = target if target not in rank else source
            problems.append(f"{imp.where}: {imp.source} imports {imp.target}: {missing} is on no layer (add it to "
                            "LAYERS in tests/test_layers.py and to docs/architecture.md)")
        elif source != target and (rank[target] > rank[source] or (rank[target] == rank[source] > 0)):
            direction = "a higher layer" if rank[target] > rank[source] else "a unit of its own layer"
            problems.append(f"{imp.where}: {imp.source} imports {imp.target}: {source} (layer {rank[source]}, "
                            f"{layers[rank[source]][0]}) may not import {target}, {direction} (layer "
                            f"{rank[target]}, {layers[rank[target]][0]})")
    return problems


def circles(found: list[Import], allowed=frozenset()) -> list[str]:
    """Every import circle between modules (one per strongly connected group), with the statements that close it."""
    graph: dict[str, dict[str, str]] = {}
    for imp in found:
        if imp.source != imp.target and (imp.source, imp.target) not in allowed:
            graph.setdefault(imp.source, {}).setdefault(imp.target, imp.where)
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(node):  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, {}):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = set()
            while not group or node not in group:
                group.add(stack.pop())
            on_stack.difference_update(group)
            if len(group) > 1:
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_describe_circle(graph, group) for group in groups]


def _describe_circle(graph: dict[str, dict[str, str]], group: set[str]) -> str:
    start = min(group)
    paths = {start: [start]}
    queue = [start]
    while queue:  # the shortest way round from start back to start, inside the group
        node = queue.pop(0)
        for nxt in sorted(graph.get(node, {})):
            if nxt == start:
                cycle = paths[node] + [start]
                steps = [f"{a} -> {b} ({graph[a][b]})" for a, b in zip(cycle, cycle[1:])]
                return "import circle: " + "; ".join(steps)
            if nxt in group and nxt not in paths:
                paths[nxt] = paths[node] + [nxt]
                queue.append(nxt)
    raise AssertionError(f"no circle through {start}")


def check(root: Path, allowed=frozenset()) -> list[str]:
    """Everything wrong with the imports of the package at ``root``: layer violations, then circles."""
    found = imports(root)
    return layer_violations(found) + circles(found, allowed)


def test_mslddm_follows_its_layers():
    problems = check(PACKAGE)
    assert not problems, "imports against docs/architecture.md:\n" + "\n".join(problems)


def test_every_unit_is_on_a_layer():
    units = {unit(name) for name in module_names(PACKAGE)}
    placed = {u for _, layer in LAYERS for u in layer}
    assert not units - placed, f"on no layer (add to LAYERS and docs/architecture.md): {sorted(units - placed)}"


def _write_package(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / "mslddm" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root / "mslddm"


def test_checker_reports_circles_and_wrong_directions(tmp_path):
    package = _write_package(tmp_path, {
        "__init__.py": '_EXPORTS = {"Pipe": "mslddm.pipelines.pipe"}\n',
        "audio.py": "def read():\n    from .stems import STEMS  # lazy, still an import\n",
        "stems.py": "from mslddm.audio import read\nSTEMS = []\n",
        "presets.py": "from .audio import read\n",
        "models/__init__.py": "",
        "models/net.py": "from ..pipelines.pipe import Pipe\n",  # a model that knows its pipeline
        "schedulers/__init__.py": "",
        "schedulers/edm.py": "from mslddm import Pipe\nfrom mslddm.models import net\n",
        "pipelines/__init__.py": "",
        "pipelines/pipe.py": "from ..models.net import Net\nimport space.ui\n",
    })
    problems = check(package)
    text = "\n".join(problems)
    assert "mslddm/models/net.py:1: mslddm.models.net imports mslddm.pipelines.pipe: models (layer 1" in text
    assert "may not import pipelines, a higher layer" in text
    assert "mslddm.schedulers.edm imports mslddm.pipelines.pipe" in text  # through _EXPORTS
    assert "mslddm.schedulers.edm imports mslddm.models.net: schedulers (layer 1" in text
    assert "may not import models, a unit of its own layer" in text
    assert "mslddm.presets imports mslddm.audio: presets is data" in text
    assert "mslddm.pipelines.pipe imports space.ui: mslddm never imports" in text
    assert any(p.startswith("import circle: mslddm.audio -> mslddm.stems (mslddm/audio.py:2); "
                            "mslddm.stems -> mslddm.audio (mslddm/stems.py:1)") for p in problems)
    assert any("mslddm.models.net -> mslddm.pipelines.pipe" in p for p in problems if p.startswith("import circle"))
    assert len([p for p in problems if p.startswith("import circle")]) == 2


def test_checker_passes_a_package_that_follows_the_layers(tmp_path):
    package = _write_package(tmp_path, {
        "__init__.py": "",
        "audio.py": "",
        "stems.py": "from .audio import *\n",
        "models/__init__.py": "",
        "models/net.py": "from .. import audio\nfrom mslddm.stems import *\n",
        "pipelines/__init__.py": "",
        "pipelines/pipe.py": "from ..models.net import Net\n\ndef f():\n    from ..models import net\n",
        "cli.py": "from mslddm.pipelines import pipe\n",
    })
    assert check(package) == []

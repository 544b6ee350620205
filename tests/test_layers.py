"""The floors of mammo_tl point one way: no module imports from a floor above its own, nor from a room beside its
own on the same floor, and no modules import each other in a circle. Every import counts, at module level or inside
a function (it runs sooner or later), relative imports resolved; the walk reads the source (AST), it imports nothing.

Floors, bottom up (a module may import its own room and the floors below):

0. ``config``, ``files``, ``compat``, ``drawing``, ``checkpoint`` and ``modeling/``: what everything builds on;
1. ``data/`` (and the package itself, whose ``__init__`` imports config, modeling and data to register them);
2. ``evaluation/``: metrics, evaluators, the report;
3. ``outputs/``: what predict writes, one module per format (it may use the evaluation's operating points);
4. ``engine/`` (training) beside ``export/`` (exporting, and the exported model's runtime);
5. ``experiments/`` (several trainings, compared) beside ``inference/`` (the predictor and the predict command);
6. ``serve/``: the DICOM node, on top of inference;
7. ``tools/`` and ``bench/``: scripts, never imported by the package.
"""
import ast
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (room, module prefixes, floor): rooms on one floor stand side by side and do not import each other
FLOORS = (
    ("config/files/compat/drawing/checkpoint/modeling",
     ("mammo_tl.config", "mammo_tl.files", "mammo_tl.compat", "mammo_tl.drawing", "mammo_tl.checkpoint",
      "mammo_tl.modeling"), 0),
    ("data", ("mammo_tl.data", "mammo_tl"), 1),
    ("evaluation", ("mammo_tl.evaluation",), 2),
    ("outputs", ("mammo_tl.outputs",), 3),
    ("engine", ("mammo_tl.engine",), 4),
    ("export", ("mammo_tl.export",), 4),
    ("experiments", ("mammo_tl.experiments",), 5),
    ("inference", ("mammo_tl.inference",), 5),
    ("serve", ("mammo_tl.serve",), 6),
    ("tools/bench", ("tools", "bench"), 7),
)


def package_modules(root, package):
    """module name -> (path, is a package's __init__) of every .py file under ``root``/``package``."""
    modules = {}
    for folder, dirs, files in os.walk(os.path.join(root, package)):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                parts = os.path.relpath(path, root)[:-3].split(os.sep)
                is_init = parts[-1] == "__init__"
                modules[".".join(parts[:-1] if is_init else parts)] = (path, is_init)
    return modules


def _targets(node, module, is_init, modules):
    """The modules an import statement names: ``from X import y`` names X.y when that is a module, else X."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if node.level:
        base = module.split(".") if is_init else module.split(".")[:-1]
        if node.level - 1 > len(base) - 1:
            raise ValueError(f"{module}:{node.lineno}: relative import beyond the top-level package")
        base = base[:len(base) - (node.level - 1)]
        stem = ".".join(base + ([node.module] if node.module else []))
    else:
        stem = node.module
    return [f"{stem}.{a.name}" if f"{stem}.{a.name}" in modules else stem for a in node.names]


def import_graph(root, package, outside=()):
    """module -> [(line, imported module)] for every import in ``package`` of one of its own modules (an
    attribute's import is its module's; a missing submodule, its nearest existing parent) or of a top-level
    name in ``outside``."""
    modules = package_modules(root, package)
    graph = {}
    for module, (path, is_init) in modules.items():
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        edges = []
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            for name in _targets(node, module, is_init, modules):
                top = name.split(".")[0]
                if top in outside:
                    edges.append((node.lineno, name))
                elif top == package:
                    target = name
                    while target not in modules:
                        target = target.rsplit(".", 1)[0]
                    if target != module:
                        edges.append((node.lineno, target))
        graph[module] = sorted(set(edges))
    return graph


def floor_of(name, floors):
    """Index of the room whose longest prefix matches ``name`` (a prefix matches itself and its submodules)."""
    best = None
    for i, (_, prefixes, _) in enumerate(floors):
        for p in prefixes:
            if (name == p or name.startswith(p + ".")) and (best is None or len(p) > best[1]):
                best = (i, len(p))
    return None if best is None else best[0]


def upward_imports(graph, floors):
    """Messages for modules in no room, for imports of a higher floor and for imports of a room beside one's own."""
    problems = []
    for module in sorted(graph):
        own = floor_of(module, floors)
        if own is None:
            problems.append(f"{module}: on no floor (add it to FLOORS)")
            continue
        for line, target in graph[module]:
            other = floor_of(target, floors)
            if other is None or other == own:
                continue
            (room, _, level), (other_room, _, other_level) = floors[own], floors[other]
            if other_level > level:
                problems.append(f"{module}:{line} imports {target}: floor {other_level} ({other_room}) is above its "
                                f"own, floor {level} ({room})")
            elif other_level == level:
                problems.append(f"{module}:{line} imports {target}: {other_room} stands beside {room} on floor "
                                f"{level}, and neither imports the other")
    return problems


def import_cycles(graph):
    """One cycle per strongly connected group of modules, as 'a:line -> b:line -> a' strings (Tarjan)."""
    adjacency = {m: sorted({t for _, t in edges if t in graph}) for m, edges in graph.items()}
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in adjacency[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.add(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(group)

    for m in sorted(graph):
        if m not in index:
            visit(m)
    line = {(m, t): ln for m, edges in graph.items() for ln, t in reversed(edges)}  # first line per edge
    cycles = []
    for group in groups:
        start = min(group)
        paths, seen, path = {start: [start]}, {start}, None
        frontier = [start]
        while frontier and path is None:  # shortest way back to ``start`` inside the group
            nxt = []
            for v in frontier:
                for w in adjacency[v]:
                    if w == start:
                        path = paths[v] + [start]
                        break
                    if w in group and w not in seen:
                        seen.add(w)
                        paths[w] = paths[v] + [w]
                        nxt.append(w)
                if path:
                    break
            frontier = nxt
        cycles.append(" -> ".join(f"{a}:{line[a, b]}" for a, b in zip(path, path[1:])) + f" -> {start}")
    return sorted(cycles)


def _write(root, files):
    for rel, text in files.items():
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)


FAKE_FLOORS = (("low", ("fake.low", "fake"), 0), ("high", ("fake.high",), 1), ("side", ("fake.side",), 1),
               ("scripts", ("tools",), 2))


def test_the_check_catches_an_upward_import_and_a_cycle(tmp_path):
    """A small package: low/a.py reaches up to high/ inside a function (relative import), high/c.py and
    high/d.py import each other (one of them inside a function), low/e.py imports the scripts' folder."""
    _write(str(tmp_path), {
        "fake/__init__.py": "",
        "fake/low/__init__.py": "",
        "fake/low/a.py": "import os\n\n\ndef f():\n    from ..high import b\n    return b\n",
        "fake/low/e.py": "import tools.train\n",
        "fake/high/__init__.py": "",
        "fake/high/b.py": "from ..low import a\n",
        "fake/high/c.py": "import fake.high.d\n",
        "fake/high/d.py": "def g():\n    from . import c\n    return c\n",
        "fake/side/__init__.py": "",
        "fake/side/s.py": "from ..low import a\nfrom ..high import b\n",
    })
    graph = import_graph(str(tmp_path), "fake", outside=("tools",))
    assert graph["fake.low.a"] == [(5, "fake.high.b")]
    assert upward_imports(graph, FAKE_FLOORS) == [
        "fake.low.a:5 imports fake.high.b: floor 1 (high) is above its own, floor 0 (low)",
        "fake.low.e:1 imports tools.train: floor 2 (scripts) is above its own, floor 0 (low)",
        "fake.side.s:2 imports fake.high.b: high stands beside side on floor 1, and neither imports the other"]
    # a -> b -> a is a cycle too (b imports a at module level, a imports b inside f)
    assert import_cycles(graph) == ["fake.high.b:1 -> fake.low.a:5 -> fake.high.b",
                                    "fake.high.c:1 -> fake.high.d:2 -> fake.high.c"]
    # a module on no floor is named, not skipped
    assert upward_imports(graph, FAKE_FLOORS[1:])[:1] == ["fake: on no floor (add it to FLOORS)"]


def test_the_check_passes_a_package_that_points_one_way(tmp_path):
    _write(str(tmp_path), {
        "fake/__init__.py": "from . import low\n",
        "fake/low/__init__.py": "from .a import f\n",
        "fake/low/a.py": "def f():\n    return 1\n",
        "fake/high/__init__.py": "",
        "fake/high/b.py": "from ..low import a\nfrom fake.low.a import f\n\n\ndef g():\n    from . import c\n",
        "fake/high/c.py": "from fake import low\n",
    })
    graph = import_graph(str(tmp_path), "fake", outside=("tools",))
    assert graph["fake.high.b"] == [(1, "fake.low.a"), (2, "fake.low.a"), (6, "fake.high.c")]
    assert graph["fake.high.c"] == [(1, "fake.low")]
    assert upward_imports(graph, FAKE_FLOORS) == []
    assert import_cycles(graph) == []


@pytest.fixture(scope="module")
def mammo_graph():
    return import_graph(REPO, "mammo_tl", outside=("tools", "bench"))


def test_mammo_tl_imports_point_down(mammo_graph):
    # the walk sees the package's imports, module-level and in functions (so it cannot pass on an empty graph)
    edges = {(m, t) for m, e in mammo_graph.items() for _, t in e}
    assert ("mammo_tl.engine.trainer", "mammo_tl.evaluation.evaluators") in edges
    assert ("mammo_tl.evaluation.gallery", "mammo_tl.drawing") in edges  # inside draw()
    assert ("mammo_tl.experiments.difficulty", "mammo_tl.evaluation.report") in edges
    assert len(edges) > 100
    problems = upward_imports(mammo_graph, FLOORS)
    assert not problems, "imports against the floors:\n" + "\n".join(problems)


def test_mammo_tl_has_no_import_cycle(mammo_graph):
    cycles = import_cycles(mammo_graph)
    assert not cycles, "modules that import each other:\n" + "\n".join(cycles)


def test_the_phantom_package_uses_only_records_and_files(mammo_graph):
    """mammo_tl/data/synthetic/ (its docstring says so): of mammo_tl it imports only data.records and files."""
    inside = [m for m in mammo_graph if m == "mammo_tl.data.synthetic" or m.startswith("mammo_tl.data.synthetic.")]
    assert len(inside) == 8  # __init__ and its seven files
    outside = {t for m in inside for _, t in mammo_graph[m] if not t.startswith("mammo_tl.data.synthetic")}
    assert outside == {"mammo_tl.data.records", "mammo_tl.files"}


def test_overlay_drawing_lives_below_the_gallery_and_predict(tmp_path):
    """mammo_tl.drawing (floor 0) draws; mammo_tl.outputs.overlay keeps predict's names, raising OutputError."""
    import cv2
    import numpy as np

    from mammo_tl import drawing
    from mammo_tl.outputs import OutputError, overlay

    assert overlay.overlay_base is drawing.overlay_base and overlay.RED == drawing.RED == (0, 0, 255)
    image = np.zeros((40, 80), np.uint16)
    image[:, 40:] = 1000
    base, f = overlay.overlay_base(image, max_side=40)  # halved: 20 x 40, values 0 and 255
    assert f == 0.5 and base.shape == (20, 40, 3) and base[0, 0].tolist() == [0, 0, 0]
    assert base[0, 39].tolist() == [255, 255, 255]
    path = str(tmp_path / "o.png")
    # boxes in the original's pixels: x 8..40 -> 4..20 drawn; 0.9 above the default 0.5 is red, 0.3 amber
    overlay.draw_overlay(base, f, [[8, 8, 40, 30], [60, 4, 76, 20]], [0.9, 0.3], path)
    drawn = cv2.imread(path)
    assert drawn[10, 4].tolist() == [0, 0, 255] and drawn[6, 30].tolist() == [0, 200, 255]
    assert np.array_equal(drawn, drawing.draw_boxes(base, f, [[8, 8, 40, 30], [60, 4, 76, 20]], [0.9, 0.3]))
    # at an operating point of 0.95 the 0.9 box is amber
    assert drawing.draw_boxes(base, f, [[8, 8, 40, 30]], [0.9], threshold=0.95)[10, 4].tolist() == [0, 200, 255]
    missing = str(tmp_path / "no_such_folder" / "o.png")
    with pytest.raises(OutputError, match=r"no_such_folder/o\.png: overlay cannot be written"):
        overlay.draw_overlay(base, f, [], [], missing)
    with pytest.raises(drawing.DrawingError, match=r"no_such_folder/o\.png: overlay cannot be written"):
        drawing.draw_overlay(base, f, [], [], missing)

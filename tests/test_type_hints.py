"""Every public function of mammo_tl/ (no leading underscore; methods and nested functions included) annotates
each parameter (self and cls aside; *args and **kwargs may stay bare) and its return type. Read with the ast
module only: nothing is imported, so the check takes a fraction of a second."""
from __future__ import annotations

import ast
import os

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "mammo_tl")


def unannotated(root: str) -> list[str]:
    """"<path>:<line> <name> (<what is missing>)" for every public function under the folder ``root`` that
    lacks a parameter or return annotation, sorted by file and line; paths are relative to root's parent."""
    found = []
    for folder, _, files in os.walk(root):
        for f in files:
            if not f.endswith(".py"):
                continue
            path = os.path.join(folder, f)
            with open(path, encoding="utf-8") as fh:
                tree = ast.parse(fh.read(), filename=path)
            for node in ast.walk(tree):
                if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or node.name.startswith("_"):
                    continue
                args = node.args
                missing = [a.arg for a in args.posonlyargs + args.args + args.kwonlyargs
                           if a.annotation is None and a.arg not in ("self", "cls")]
                if node.returns is None:
                    missing.append("return")
                if missing:
                    found.append((os.path.relpath(path, os.path.dirname(root)), node.lineno, node.name, missing))
    return [f"{p}:{line} {name} ({', '.join(missing)})" for p, line, name, missing in sorted(found)]


def test_public_functions_of_mammo_tl_are_annotated():
    missing = unannotated(PACKAGE)
    assert not missing, (f"{len(missing)} public function(s) of mammo_tl/ without full type hints (annotate every "
                         "parameter but self/cls/*args/**kwargs, and the return type):\n" + "\n".join(missing))


def test_unannotated_names_each_bare_function(tmp_path):
    lines = [
        "def typed(x: int, *args, y: str = '', **kwargs) -> int:",  # 1: complete (*args/**kwargs may stay bare)
        "    def inner(z) -> None:",                                 # 2: nested, a parameter bare
        "        pass",
        "    return x",
        "",
        "",
        "def bare(x, y: int, *, z):",                                # 7: x, z and the return bare
        "    return x",
        "",
        "",
        "def _private(x):",                                          # 11: private: not checked
        "    return x",
        "",
        "",
        "class Thing:",
        "    def method(self, v: int) -> None:",                     # 16: complete (self needs none)
        "        pass",
        "",
        "    @classmethod",
        "    def make(cls, v) -> Thing:",                            # 20: v bare
        "        return cls()",
        "",
        "    async def fetch(self) -> int:",                          # 23: complete
        "        return 1",
        "",
        "    def __repr__(self):",                                   # 26: dunder: not checked
        "        return 'Thing'",
    ]
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "mod.py").write_text("\n".join(lines) + "\n")
    (pkg / "sub" / "ok.py").write_text("def fine(a: float = 1.0) -> float:\n    return a\n")
    assert unannotated(str(pkg)) == [
        "pkg/mod.py:2 inner (z)",
        "pkg/mod.py:7 bare (x, z, return)",
        "pkg/mod.py:20 make (v)",
    ]
    (pkg / "mod.py").write_text("def typed(x: int) -> int:\n    return x\n")
    assert unannotated(str(pkg)) == []

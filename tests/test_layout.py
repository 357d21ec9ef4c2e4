"""The layout's import rules, read from the source with `ast`:

1. no stage module imports another (pipeline/stages/*): a stage's code deps are the modules it
   imports (pipeline/registry.py: code_deps), so an edit reruns exactly the stages whose code it is;
2. no library module imports pipeline.stages;
3. imports point down the layers (LAYERS), and neither the graph of packages nor that of modules
   has a cycle;
4. a stage module is thin: at most MAX_STAGE_LINES lines, `run(params, ...)`, no argv, no
   globals, and no record of its own (records live with the library code they describe);
5. a package's __init__.py is empty or only a docstring: it runs whenever any module of its
   package is imported, so whatever it holds is in the code deps of every stage that imports one;
6. imports of pipeline modules are absolute: code_deps follows `pipeline.` imports only;
7. every package is listed in pyproject.toml, or an installed pipeline lacks it.

Each checker takes an import map (module -> the pipeline modules it imports) or a module's source,
and is also fed a small bad case of its own: a rule that cannot fail holds nothing.
"""
from __future__ import annotations

import ast
import tomllib
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "pipeline"
MAX_STAGE_LINES = 120

# The nodes of the layer graph (a package, or a top-level module), and the nodes each may import
# besides itself. Measured on the code, then pinned. cost plans and prices with the engine's parts
# (engine/plan.py's Plan, engine/identity.py, a real engine/step.py step timed), so the engine is
# below it: the training loop gets the budget guard and the speed recorder from the train stage.
LIBRARY = frozenset({"core", "data", "model", "engine", "cost", "evaluation", "reports", "tools"})
LAYERS: dict[str, frozenset[str]] = {
    "core": frozenset(),
    "data": frozenset({"core"}),
    "model": frozenset({"core", "data"}),
    "engine": frozenset({"core", "data", "model"}),
    "cost": frozenset({"core", "data", "model", "engine"}),
    "evaluation": frozenset({"core", "data", "model", "engine"}),
    "reports": LIBRARY - {"reports", "tools"},
    "tools": (LIBRARY - {"tools"}) | {"registry"},   # dag writes dvc.yaml from the registry
    # a stage records the params it declares (registry.declared_params) as what made its outputs
    "stages": LIBRARY | {"registry"},
    # the stage list names each stage's module as a string and imports it only to run it
    "registry": LIBRARY - {"tools"},
    # every stage's code deps start at the CLI: what it imports would rerun every stage
    "__main__": frozenset({"core", "registry"}),
}
ENTRY_POINTS = {"stages", "registry", "__main__"}   # the modules above the library


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def node_of(module: str) -> str:
    """pipeline.cost.budget -> cost; pipeline.registry -> registry; pipeline -> pipeline."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _parsed() -> dict[str, ast.Module]:
    return {module_name(p): ast.parse(p.read_text(encoding="utf-8")) for p in sorted(PACKAGE.rglob("*.py"))}


def imported(tree: ast.Module, modules: set[str]) -> set[str]:
    """The pipeline modules a module imports, at any depth of its code (a function's import runs
    too); `from pipeline.cost import budget` names the module pipeline.cost.budget."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").split(".")[0] == "pipeline":
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in modules else node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "pipeline"}
    return found


def import_map() -> dict[str, set[str]]:
    parsed = _parsed()
    return {module: imported(tree, set(parsed)) for module, tree in parsed.items()}


# ---- the checkers --------------------------------------------------------------------------------

def stage_to_stage(imports: dict[str, set[str]]) -> list[str]:
    return [f"{src} imports {dst}: a stage never imports another stage" for src, dsts in sorted(imports.items())
            if node_of(src) == "stages" for dst in sorted(dsts) if node_of(dst) == "stages"]


def library_to_stages(imports: dict[str, set[str]]) -> list[str]:
    return [f"{src} imports {dst}: library code never imports a stage" for src, dsts in sorted(imports.items())
            if node_of(src) not in ENTRY_POINTS for dst in sorted(dsts) if node_of(dst) == "stages"]


def upward(imports: dict[str, set[str]]) -> list[str]:
    problems = []
    for src, dsts in sorted(imports.items()):
        node = node_of(src)
        if node == "pipeline":
            continue
        allowed = LAYERS.get(node)
        if allowed is None:
            problems.append(f"{src}: package {node!r} has no place in LAYERS: add it where it belongs")
            continue
        problems += [f"{src} ({node}) imports {dst} ({node_of(dst)}): {node} may import only "
                     f"{', '.join(sorted(allowed)) or 'nothing else of pipeline'}"
                     for dst in sorted(dsts) if node_of(dst) not in allowed | {node, "pipeline"}]
    return problems


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The cycles of a graph (node -> nodes it points to), each from its first node back to it."""
    found, done = [], set()

    def visit(node: str, path: list[str]) -> None:
        if node in path:
            found.append(path[path.index(node):] + [node])
            return
        if node in done:
            return
        for nxt in sorted(graph.get(node, ())):
            visit(nxt, path + [node])
        done.add(node)

    for node in sorted(graph):
        visit(node, [])
    return found


def node_graph(imports: dict[str, set[str]]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for src, dsts in imports.items():
        graph.setdefault(node_of(src), set()).update(node_of(d) for d in dsts if node_of(d) != node_of(src))
    return graph


def stage_problems(name: str, source: str) -> list[str]:
    tree = ast.parse(source)
    problems = []
    lines = len(source.splitlines())
    if lines > MAX_STAGE_LINES:
        problems.append(f"{name} has {lines} lines (at most {MAX_STAGE_LINES}): move what it computes into the "
                        "library, leaving the reading of records, the calls and the writing of records")
    run = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "run"]
    if not run or [a.arg for a in run[0].args.args[:1]] != ["params"]:
        problems.append(f"{name} defines no run(params, ...): the registry calls run(params, **paths)")
    for node in ast.walk(tree):
        if isinstance(node, ast.Global):
            problems.append(f"{name} line {node.lineno}: `global`: a stage keeps no state between calls")
        if isinstance(node, ast.Attribute) and node.attr == "argv":
            problems.append(f"{name} line {node.lineno}: reads argv: params and paths come through run()")
        if isinstance(node, ast.ClassDef) and any(getattr(b, "id", getattr(b, "attr", None)) == "Record"
                                                  for b in node.bases):
            problems.append(f"{name} defines the record {node.name}: a record lives with the library code "
                            "it describes")
    return problems


def init_problems(name: str, source: str) -> list[str]:
    """An __init__ runs, and is a code dep, wherever any module of its package is imported: it may
    hold a docstring, and a facade that re-exports its own package's modules (its parts are one
    unit to whoever imports one of them), nothing else."""
    package = ".".join(Path(name).parent.parts)

    def allowed(node: ast.stmt) -> bool:
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            return True
        if isinstance(node, ast.ImportFrom):
            return (node.module or "").startswith(package + ".") or node.module == "__future__"
        return isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["__all__"]

    return [] if all(allowed(node) for node in ast.parse(source).body) else [
        f"{name} holds code: it would run, and be a code dep, wherever any module of its package is imported"]


def relative_imports(name: str, source: str) -> list[str]:
    return [f"{name} line {n.lineno}: relative import: write `from pipeline.... import`, which code_deps follows"
            for n in ast.walk(ast.parse(source)) if isinstance(n, ast.ImportFrom) and n.level]


# ---- the rules, on the code ------------------------------------------------------------------------

def test_stages_never_import_each_other():
    assert stage_to_stage(import_map()) == []


def test_library_code_never_imports_a_stage():
    assert library_to_stages(import_map()) == []


def test_imports_point_down_the_layers():
    assert upward(import_map()) == []


def test_the_packages_and_their_pinned_layers_have_no_cycle():
    assert cycles(node_graph(import_map())) == []
    assert cycles({node: set(allowed) for node, allowed in LAYERS.items()}) == []


def test_no_two_modules_import_each_other_directly_or_in_a_loop():
    assert cycles(import_map()) == []


def test_stage_modules_are_thin():
    stages = sorted((PACKAGE / "stages").glob("*.py"))
    problems = [p for path in stages if path.name != "__init__.py"
                for p in stage_problems(path.name, path.read_text(encoding="utf-8"))]
    assert problems == []
    assert {"tokenize.py", "estimate.py", "train.py", "evaluate.py"} <= {p.name for p in stages}


def test_package_inits_are_empty_or_a_docstring():
    assert [p for path in sorted(PACKAGE.rglob("__init__.py"))
            for p in init_problems(str(path.relative_to(PACKAGE.parent)), path.read_text(encoding="utf-8"))] == []


def test_imports_are_absolute():
    assert [p for path in sorted(PACKAGE.rglob("*.py"))
            for p in relative_imports(path.name, path.read_text(encoding="utf-8"))] == []


def test_every_package_is_installed():
    listed = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    assert sorted(module_name(p) for p in PACKAGE.rglob("__init__.py")) == sorted(listed)


# ---- each checker fails on a bad case ---------------------------------------------------------------

def test_the_checkers_catch_what_they_forbid():
    assert init_problems("pipeline/engine/checkpoint/__init__.py",
                         "from pipeline.engine.checkpoint.store import save\n__all__ = ['save']") == []
    assert init_problems("pipeline/engine/checkpoint/__init__.py", "from pipeline.cost import budget") != []
    assert init_problems("pipeline/model/__init__.py", "def f():\n    pass") != []
    assert stage_to_stage({"pipeline.stages.train": {"pipeline.stages.estimate", "pipeline.core.params"}}) == [
        "pipeline.stages.train imports pipeline.stages.estimate: a stage never imports another stage"]
    assert library_to_stages({"pipeline.cost.budget": {"pipeline.stages.train"},
                              "pipeline.registry": {"pipeline.stages.train"}}) == [
        "pipeline.cost.budget imports pipeline.stages.train: library code never imports a stage"]
    assert upward({"pipeline.data.tokens": {"pipeline.model.build", "pipeline.core.errors"}}) == [
        "pipeline.data.tokens (data) imports pipeline.model.build (model): data may import only core"]
    assert upward({"pipeline.engine.trainer": {"pipeline.cost.budget"}}) != []   # the loop is handed the guard
    assert upward({"pipeline.cost.planner": {"pipeline.engine.plan"}}) == []
    assert upward({"pipeline.__main__": {"pipeline.tools.doctor"}}) != []
    assert "has no place in LAYERS" in upward({"pipeline.newthing.x": set()})[0]
    assert cycles(node_graph({"pipeline.cost.a": {"pipeline.engine.b"}, "pipeline.engine.b": {"pipeline.data.c"},
                              "pipeline.data.c": {"pipeline.cost.a"}})) == [["cost", "engine", "data", "cost"]]
    launch, multinode = "pipeline.core.launch", "pipeline.core.multinode"
    assert cycles({launch: {multinode}, multinode: {launch}}) == [[launch, multinode, launch]]


def test_the_source_checkers_catch_what_they_forbid():
    fat = '"""A stage."""\n' + "x = 1\n" * MAX_STAGE_LINES + "def run(params):\n    return x\n"
    assert "lines (at most" in stage_problems("fat.py", fat)[0]
    assert "defines no run" in stage_problems("bare.py", "def main(argv):\n    pass\n")[0]
    assert "defines no run" in stage_problems("odd.py", "def run(paths):\n    pass\n")[0]
    sneaky = ("import sys\nfrom pipeline.core.record import Record\nclass Report(Record):\n    pass\n"
              "def run(params):\n    global seen\n    return sys.argv\n")
    problems = stage_problems("sneaky.py", sneaky)
    assert len(problems) == 3 and "defines the record Report" in problems[0]
    assert "line 6: `global`" in problems[1] and "line 7: reads argv" in problems[2]
    assert stage_problems("ok.py", '"""Doc."""\ndef run(params, *, tokens):\n    return tokens\n') == []
    assert init_problems("a/__init__.py", "") == [] and init_problems("b/__init__.py", '"""What b holds."""\n') == []
    assert init_problems("c/__init__.py", '"""Doc."""\nfrom pipeline.c.x import y\n') != []
    assert relative_imports("x.py", "from .tokens import read_tokens\n") != []
    assert relative_imports("x.py", "from pipeline.data.tokens import read_tokens\n") == []

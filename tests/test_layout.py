"""The architecture as the README draws it: folders by concern, no import cycles, small modules,
classes and functions, a config that never imports TensorFlow, a YAML for every registered
builder, and a code map that names every module."""

import ast
import subprocess
import sys

from conftest import ROOT

PACKAGE = ROOT / "cnn"
LIMITS = {"module": 400, "class": 150, "function": 50}


def modules() -> dict:
    """{'cnn.training.steps': path} for every module of the package."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


def top_level_imports(path) -> set:
    """The cnn modules `path` imports at its top level (not inside functions)."""
    names, known = set(), modules()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("cnn"):
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in known}
        elif isinstance(node, ast.Import):
            names |= {a.name for a in node.names if a.name.startswith("cnn")}
    return names & set(known)


def test_no_import_cycles():
    graph = {name: top_level_imports(path) - {name} for name, path in modules().items()}

    def visit(name, path):
        assert name not in path, "import cycle: " + " -> ".join([*path[path.index(name):], name])
        for dep in graph[name]:
            if not name.startswith(dep + "."):  # a package's own __init__ is not a cycle
                visit(dep, [*path, name])

    for name in graph:
        visit(name, [])


def test_modules_classes_and_functions_stay_small():
    too_big = []
    for name, path in modules().items():
        source = path.read_text()
        if source.count("\n") > LIMITS["module"]:
            too_big.append(f"{name}: {source.count(chr(10))} lines")
        for node in ast.walk(ast.parse(source)):
            kind = "class" if isinstance(node, ast.ClassDef) else "function" if isinstance(
                node, (ast.FunctionDef, ast.AsyncFunctionDef)) else None
            if kind and node.end_lineno - node.lineno + 1 > LIMITS[kind]:
                too_big.append(f"{name}.{node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert too_big == []


def test_the_config_and_the_registry_never_import_tensorflow():
    code = ("import sys; import cnn.config, cnn.registry; cnn.config.compose('model=bn_cnn', 'optimizer=sgd'); "
            "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, 'imported'")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_every_registered_builder_has_its_yaml():
    from cnn.data import DATASETS
    from cnn.models import MODELS
    from cnn.optim import OPTIMIZERS

    for group, names in (("model", MODELS), ("dataset", DATASETS), ("optimizer", OPTIMIZERS)):
        yamls = {p.stem for p in (ROOT / "conf" / group).glob("*.yaml")}
        assert set(names) == yamls, group


def test_the_readme_code_map_names_every_module():
    readme = (ROOT / "README.md").read_text()
    code_map = readme.split("## How the code is organized", 1)[1].split("```", 2)[1]
    for name, path in modules().items():
        if path.name == "__init__.py":
            assert f"cnn/{'/'.join(name.split('.')[1:])}/" in code_map or name == "cnn", name
        elif path.parent == PACKAGE:
            assert f"cnn/{path.name}" in code_map, name
        else:
            assert f"cnn/{path.parent.name}/" in code_map and path.stem in code_map, name


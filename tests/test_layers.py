"""The import layers of `nmt` (README, "How the code is laid out"), enforced on the source.

Every import statement of every module is read with `ast`, function-local ones included, and
checked against LAYERS: a module may import from its own layer and from lower ones, never from a
higher one; the reversible core imports nothing from `nmt` outside `nmt.reversible`; the benches
import no command module; no module is left out of a layer; and outside `nmt.reversible` the
imports between modules form no cycle. The checker is run on small synthetic packages too, so
these tests show it catches what it must (a model module importing from `nmt.commands`).
"""
from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "nmt"
README = PACKAGE.parent / "README.md"

# Lowest first. A module belongs to the layer of its longest matching prefix (`layer_of`).
LAYERS: Sequence[Tuple[str, Sequence[str]]] = (
    ("core", ("nmt.reversible",)),
    ("base", ("nmt", "nmt.errors", "nmt.typed_yaml", "nmt.config", "nmt.device", "nmt.checkpoint",
              "nmt.distributed", "nmt.run_layout")),
    ("data", ("nmt.data",)),
    ("models", ("nmt.models", "nmt.reversal_drift")),
    ("decoding", ("nmt.search", "nmt.evaluation", "nmt.translation")),
    ("application", ("nmt.training", "nmt.validation", "nmt.run", "nmt.optim", "nmt.stats",
                     "nmt.memory_peak", "nmt.results", "nmt.results_table")),
    ("interface", ("nmt.cli", "nmt.__main__", "nmt.arguments", "nmt.commands", "nmt.bench")),
)
RANK = {name: rank for rank, (name, _) in enumerate(LAYERS)}
SEALED = "nmt.reversible"  # imports nothing from nmt but itself
FORBIDDEN = (("nmt.bench", "nmt.commands"),)  # (importer, imported) within a layer


# --------------------------------------------------------------------------- the checker


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def read_imports(root: Path) -> Dict[str, List[Tuple[str, int]]]:
    """module -> [(imported nmt module, line)] for every .py file under the package `root`,
    with `from package import submodule` resolved to the submodule."""
    files = {module_name(path, root): path for path in sorted(root.rglob("*.py"))}
    found = {}
    for name, path in files.items():
        is_package = path.name == "__init__.py"
        imports = []
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                imports += [(alias.name, node.lineno) for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _absolute(node, name, is_package)
                for alias in node.names:
                    submodule = f"{base}.{alias.name}"
                    imports.append((submodule if submodule in files else base, node.lineno))
        found[name] = [(target, line) for target, line in imports
                       if target == root.name or target.startswith(root.name + ".")]
    return found


def _absolute(node: ast.ImportFrom, importer: str, is_package: bool) -> str:
    if not node.level:
        return node.module
    package = importer.split(".") if is_package else importer.split(".")[:-1]
    package = package[:len(package) - (node.level - 1)]
    return ".".join(package + ([node.module] if node.module else []))


def layer_of(module: str) -> Optional[str]:
    """The layer of the longest prefix naming `module` or a package holding it (`nmt` itself
    names only the package's __init__.py)."""
    matches = [(len(prefix), layer) for layer, prefixes in LAYERS for prefix in prefixes
               if module == prefix or ("." in prefix and module.startswith(prefix + "."))]
    return max(matches)[1] if matches else None


def _under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def layer_violations(imports: Dict[str, List[Tuple[str, int]]]) -> List[str]:
    """One line per import that breaks the layer rule, and per module in no layer."""
    problems = []
    for module, targets in sorted(imports.items()):
        own = layer_of(module)
        if own is None:
            problems.append(f"{module}: in no layer (add it to LAYERS and the README)")
            continue
        for target, line in targets:
            theirs = layer_of(target)
            where = f"{module} line {line} ({own}) imports {target} ({theirs})"
            if _under(module, SEALED) and not _under(target, SEALED):
                problems.append(f"{where}: {SEALED} imports nothing else from nmt")
            elif theirs is None:
                problems.append(f"{where}: {target} is in no layer")
            elif RANK[theirs] > RANK[own]:
                problems.append(f"{where}: a layer imports only from lower layers")
            elif any(_under(module, a) and _under(target, b) for a, b in FORBIDDEN):
                problems.append(f"{where}: the benches import no command module")
    return problems


def import_cycles(imports: Dict[str, List[Tuple[str, int]]], *, skip: str = SEALED
                  ) -> List[List[str]]:
    """The strongly connected groups of two or more modules (or a module importing itself),
    leaving out modules under `skip`: each is a cycle of imports."""
    graph = {module: sorted({t for t, _ in targets if t in imports and not _under(t, skip)})
             for module, targets in imports.items() if not _under(module, skip)}
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(module: str) -> None:  # Tarjan's algorithm
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for target in graph[module]:
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in on_stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            group = []
            while not group or group[-1] != module:
                group.append(stack.pop())
                on_stack.discard(group[-1])
            if len(group) > 1 or module in graph[module]:
                groups.append(sorted(group))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return groups


# --------------------------------------------------------------------------- the rule holds


def test_every_module_keeps_to_its_layer():
    assert layer_violations(read_imports(PACKAGE)) == []


def test_no_import_cycles_outside_the_reversible_core():
    assert import_cycles(read_imports(PACKAGE)) == []


def test_the_readme_lists_these_layers_in_this_order():
    text = README.read_text(encoding="utf-8")
    section = text.split("## How the code is laid out", 1)[1].split("\n## ", 1)[0]
    assert re.findall(r"^\| (\w+) \|", section, flags=re.M)[1:] == [name for name, _ in LAYERS]


def test_the_imports_are_read_including_function_local_ones():
    imports = {module: {target for target, _ in targets}
               for module, targets in read_imports(PACKAGE).items()}
    assert "nmt.checkpoint" in imports["nmt.training"]  # from nmt import checkpoint as ckpt
    assert "nmt.run" in imports["nmt.bench.memory"]  # inside a function


# --------------------------------------------------------------------------- the checker catches


def make_package(tmp_path: Path, files: Dict[str, str]) -> Path:
    """A throwaway `nmt` package: relative path -> source; every folder gets an __init__.py."""
    root = tmp_path / "nmt"
    for relative, source in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source, encoding="utf-8")
    for folder in [root, *[p for p in root.rglob("*") if p.is_dir()]]:
        (folder / "__init__.py").touch()
    return root


def test_a_model_module_importing_a_command_fails(tmp_path):
    root = make_package(tmp_path, {
        "commands/train.py": "def run(args):\n    return 0\n",
        "models/fine.py": "from nmt.errors import UserError\n",
        "models/bad.py": "import torch\n\n\ndef build():\n    from nmt.commands.train import run\n",
        "errors.py": "",
    })
    problems = layer_violations(read_imports(root))
    assert len(problems) == 1
    assert problems[0].startswith("nmt.models.bad line 5 (models) imports nmt.commands.train "
                                  "(interface): a layer imports only from lower layers")


@pytest.mark.parametrize("source", ["from nmt.commands import train\n",
                                    "import nmt.commands.train as train\n",
                                    "from ..commands.train import run\n"])
def test_every_spelling_of_the_import_is_caught(tmp_path, source):
    root = make_package(tmp_path, {"commands/train.py": "run = None\n", "models/bad.py": source})
    (problem,) = layer_violations(read_imports(root))
    assert "nmt.models.bad line 1 (models) imports nmt.commands" in problem


def test_bench_importing_a_command_and_core_importing_nmt_fail(tmp_path):
    root = make_package(tmp_path, {
        "commands/translate.py": "", "errors.py": "",
        "bench/speed.py": "from nmt.commands.translate import check_beam\n",
        "reversible/cells.py": "from nmt.errors import UserError\n",
        "unplaced.py": "",
    })
    problems = layer_violations(read_imports(root))
    assert [p.split(":")[-1].strip() for p in problems] == [
        "the benches import no command module", "nmt.reversible imports nothing else from nmt",
        "in no layer (add it to LAYERS and the README)"]


def test_an_import_cycle_is_found(tmp_path):
    root = make_package(tmp_path, {
        "data/corpus.py": "def f():\n    from nmt.config import SPLITS\n",
        "config.py": "from nmt.data.corpus import f\n",
        "reversible/a.py": "from nmt.reversible.b import x\n",
        "reversible/b.py": "from nmt.reversible.a import y\n",
    })
    assert import_cycles(read_imports(root)) == [["nmt.config", "nmt.data.corpus"]]

"""The package's layout: the runtime apart from its analysis and test code, and no import cycle."""
import ast
import pathlib
import subprocess
import sys
from typing import Dict, List, Set

import pytest

from tbx11k.testing import REPO_ROOT

PACKAGE = 'tbx11k'
#: subpackages for analysis and tests: the runtime never imports them
NOT_RUNTIME = ('tbx11k.testing', 'tbx11k.benchmark', 'tbx11k.analysis')


def package_modules(root: str = REPO_ROOT) -> Dict[str, pathlib.Path]:
    """Dotted module name -> file, for every module of the package (a package is its __init__)."""
    modules = {}
    for path in sorted(pathlib.Path(root, PACKAGE).rglob('*.py')):
        parts = list(path.relative_to(root).with_suffix('').parts)
        if parts[-1] == '__init__':
            parts.pop()
        modules['.'.join(parts)] = path
    return modules


def imports_of(name: str, path: pathlib.Path, modules: Dict[str, pathlib.Path]) -> Set[str]:
    """The package modules that module ``name`` imports, at module level or in a function.

    ``from X import a`` names ``X.a`` where that is a module, else ``X``; relative imports are
    resolved against ``name`` (a package's ``__init__`` counts as the package)."""
    is_package = path.name == '__init__.py'
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split('.')
                base = base[:len(base) - node.level + (1 if is_package else 0)]
                source = '.'.join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ''
            targets = [f'{source}.{alias.name}' if f'{source}.{alias.name}' in modules else source
                       for alias in node.names]
        else:
            continue
        for target in targets:
            # ``import tbx11k.a.b`` binds the deepest module of the package that it names
            while target and target not in modules:
                target = target.rpartition('.')[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph() -> Dict[str, Set[str]]:
    modules = package_modules()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def find_cycle(graph: Dict[str, Set[str]]) -> List[str]:
    """One import cycle of ``graph`` as [a, b, ..., a], or [] when it is acyclic."""
    state: Dict[str, int] = {}  # 1: on the current path, 2: done
    path: List[str] = []

    def visit(node: str) -> List[str]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return []

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return []


def test_the_graph_sees_relative_absolute_and_function_level_imports(tmp_path):
    (tmp_path / PACKAGE / 'sub').mkdir(parents=True)
    files = {'__init__.py': 'from . import a\n', 'a.py': 'def f():\n    from .sub import b\n',
             'sub/__init__.py': '', 'sub/b.py': 'import tbx11k.a\n'}
    for relative, text in files.items():
        (tmp_path / PACKAGE / relative).write_text(text)
    modules = package_modules(str(tmp_path))
    graph = {n: imports_of(n, p, modules) for n, p in modules.items()}
    assert graph == {'tbx11k': {'tbx11k.a'}, 'tbx11k.a': {'tbx11k.sub.b'}, 'tbx11k.sub': set(),
                     'tbx11k.sub.b': {'tbx11k.a'}}
    assert find_cycle(graph) == ['tbx11k.a', 'tbx11k.sub.b', 'tbx11k.a']


def test_no_import_cycle_in_the_package():
    graph = import_graph()
    assert len(graph) > 50 and 'tbx11k.models.compiled_dino' in graph
    assert find_cycle(graph) == []


def test_runtime_modules_never_import_testing_or_benchmark():
    wrong = {f'{name} imports {target}' for name, targets in import_graph().items()
             if not name.startswith(NOT_RUNTIME) for target in targets
             if target.startswith(NOT_RUNTIME)}
    assert not wrong, sorted(wrong)


@pytest.mark.slow
def test_import_tbx11k_loads_runtime_modules_only():
    code = ('import sys, tbx11k; print(sorted(m for m in sys.modules '
            f'if m.startswith({NOT_RUNTIME!r})))')
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          cwd=REPO_ROOT, timeout=300, check=True)
    assert proc.stdout.strip() == '[]', proc.stdout + proc.stderr

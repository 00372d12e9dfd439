"""The project's modules form no import cycle and import each other only at load time (issue 10):
an import of a project module inside a function hides a dependency, or a cycle."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MODULES = sorted([p.stem for p in ROOT.glob('*.py')] + ['sync_batchnorm'])


def _source(name):
    path = ROOT / f'{name}.py'
    return (path if path.exists() else ROOT / name / '__init__.py').read_text()


def _imported(node):
    if isinstance(node, ast.Import):
        return [alias.name.split('.')[0] for alias in node.names]
    if isinstance(node, ast.ImportFrom) and node.module and not node.level:
        return [node.module.split('.')[0]]
    return []


def _load_time_imports(name):
    tree = ast.parse(_source(name))
    return {m for node in tree.body for m in _imported(node) if m in MODULES and m != name}


def test_project_modules_import_each_other_without_a_cycle():
    graph = {name: _load_time_imports(name) for name in MODULES}
    done, path = set(), []

    def visit(name):
        if name in path:
            pytest.fail(f'import cycle: {" -> ".join(path[path.index(name):] + [name])}')
        if name in done:
            return
        path.append(name)
        for other in sorted(graph[name]):
            visit(other)
        path.pop()
        done.add(name)
    for name in MODULES:
        visit(name)


def test_no_project_module_is_imported_inside_a_function():
    inside = []
    for name in MODULES:
        for node in ast.walk(ast.parse(_source(name))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                inside += [f'{name}.{node.name}: {m}' for sub in ast.walk(node)
                           for m in _imported(sub) if m in MODULES]
    assert inside == []


@pytest.mark.parametrize('name', ['metrics', 'inception_utils', 'utils', 'train_fns',
                                  'distributed', 'layers'])
def test_each_module_imports_alone(name):
    proc = subprocess.run([sys.executable, '-c', f'import {name}'], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr

"""The house rules, as tests: formatted and linted (ruff), typed where modules meet (mypy), ``py.typed`` shipped."""

import ast
import pathlib
import shutil
import subprocess
import sys

import pytest

import n2v_estimator

PACKAGE = pathlib.Path(n2v_estimator.__file__).parent
ROOT = PACKAGE.parent
IN_CHECKOUT = (ROOT / "pyproject.toml").exists()


def _run(*command):
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.mark.skipif(
    not IN_CHECKOUT or shutil.which("ruff") is None, reason="ruff and the checkout: pip install -e .[test]"
)
def test_the_code_is_formatted_and_linted():
    formatted = _run("ruff", "format", "--check", ".")
    assert formatted.returncode == 0, f"run `ruff format .`:\n{formatted.stdout}{formatted.stderr}"
    linted = _run("ruff", "check", ".")
    assert linted.returncode == 0, f"run `ruff check --fix .`, then mend the rest:\n{linted.stdout}{linted.stderr}"


@pytest.mark.slow
@pytest.mark.skipif(not IN_CHECKOUT, reason="the checkout's mypy configuration (pyproject.toml)")
def test_mypy_finds_no_error_in_the_package():
    checked = _run(sys.executable, "-m", "mypy")
    assert checked.returncode == 0, checked.stdout[-6000:] + checked.stderr[-2000:]


def test_the_package_says_it_is_typed():
    assert (PACKAGE / "py.typed").exists()


def _definitions(module):
    """Top-level functions and classes of a module of the package, by name."""
    path = PACKAGE / (module.replace(".", "/") + ".py")
    if not path.exists():
        path = PACKAGE / module.replace(".", "/") / "__init__.py"
    tree = ast.parse(path.read_text())
    return {node.name: node for node in tree.body if isinstance(node, (ast.FunctionDef, ast.ClassDef))}


def _unannotated(function, owner=""):
    """What of a function's signature has no annotation: its parameters (but self and cls) and its return."""
    arguments = function.args
    missing = [
        a.arg
        for a in [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs]
        if a.annotation is None and a.arg not in ("self", "cls")
    ]
    missing += [f"*{a.arg}" for a in (arguments.vararg, arguments.kwarg) if a is not None and a.annotation is None]
    if function.returns is None and function.name != "__init__":
        missing.append("return")
    return [f"{owner}{function.name}({name})" for name in missing]


def _missing_in(node):
    if isinstance(node, ast.FunctionDef):
        return _unannotated(node)
    methods = [n for n in node.body if isinstance(n, ast.FunctionDef)]
    return [
        item
        for method in methods
        if method.name == "__init__" or not method.name.startswith("_") or method.name == "__call__"
        for item in _unannotated(method, f"{node.name}.")
    ]


def test_every_function_that_one_folder_imports_from_another_is_annotated():
    """Where modules of two folders (layers) meet, the signature is typed: the contract mypy checks."""
    from test_layout import _imports  # the import graph the layer test reads

    missing = set()
    for importer, targets in _imports().items():
        for target in targets:
            if importer.split(".")[0] == target.split(".")[0] or target == "__init__":
                continue
            source = (PACKAGE / importer.replace(".", "/")).with_suffix(".py")
            if not source.exists():
                source = PACKAGE / importer.replace(".", "/") / "__init__.py"
            names = {
                alias.name
                for node in ast.walk(ast.parse(source.read_text()))
                if isinstance(node, ast.ImportFrom)
                for alias in node.names
            }
            definitions = _definitions(target)
            for name in names & set(definitions):
                missing.update(f"{target}.{item}" for item in _missing_in(definitions[name]))
    assert not missing, "\n".join(sorted(missing))


def test_the_public_api_is_annotated():
    missing = []
    for name, module in n2v_estimator._PUBLIC.items():
        definitions = _definitions(module)
        if name in definitions:
            missing += _missing_in(definitions[name])
    assert not missing, missing

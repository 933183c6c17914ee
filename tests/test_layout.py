"""The layout the README promises: estimator.py orchestrates, one module per idea, all named."""

import ast
import pathlib
import re

import pytest

import n2v_estimator

PACKAGE = pathlib.Path(n2v_estimator.__file__).parent
README = PACKAGE.parent / "README.md"


def _is_type_checking_block(node):
    """``if TYPE_CHECKING:`` holding imports only: names for the type checker."""
    return (
        isinstance(node, ast.If)
        and isinstance(node.test, ast.Name)
        and node.test.id == "TYPE_CHECKING"
        and all(isinstance(n, (ast.Import, ast.ImportFrom)) for n in node.body)
    )


def test_estimator_module_holds_only_the_class():
    source = (PACKAGE / "estimator.py").read_text()
    top_level = ast.parse(source).body
    kinds = {type(node).__name__ for node in top_level if not _is_type_checking_block(node)}
    assert kinds <= {"Expr", "ImportFrom", "Import", "ClassDef"}, kinds  # no helper functions, no state
    assert [node.name for node in top_level if isinstance(node, ast.ClassDef)] == ["Noise2VoidDenoiser"]


def test_every_module_can_be_read_in_one_sitting():
    """No module over 500 lines: past that, an idea has separated and wants a module of its own."""
    long = {
        str(path.relative_to(PACKAGE)): n
        for path in PACKAGE.rglob("*.py")
        if (n := len(path.read_text().splitlines())) > 500
    }
    assert not long, long


def test_the_public_names_load_on_first_use_from_the_modules_that_the_type_checkers_see():
    tree = ast.parse((PACKAGE / "__init__.py").read_text())
    (checking,) = [node for node in tree.body if isinstance(node, ast.If)]  # if TYPE_CHECKING:
    seen = {alias.name: node.module for node in checking.body for alias in node.names}
    assert seen == n2v_estimator._PUBLIC
    assert set(n2v_estimator.__all__) == {*seen, "__version__"}
    for name, module in seen.items():
        assert getattr(n2v_estimator, name) is getattr(__import__(f"n2v_estimator.{module}", fromlist=[name]), name)


def test_the_architecture_page_names_every_module():
    architecture = PACKAGE.parent / "docs" / "architecture.md"
    if not architecture.exists():  # installed without the repository
        return
    layout = architecture.read_text()
    for path in PACKAGE.rglob("*.py"):
        if path.name == "__init__.py":
            assert path.parent.name == "n2v_estimator" or f"{path.parent.name}/" in layout, path
        else:
            assert re.search(rf"(?<![\w.]){re.escape(path.name)}\b", layout), path.relative_to(PACKAGE)


def _imports():
    """Every import of a module of the package by one of its modules, at any depth (a function's lazy import
    too): {importer: {imported: line}}, dotted names inside the package ("fit.plan")."""
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(PACKAGE).with_suffix("").parts).removesuffix("__init__").rstrip(".")
        name = name or "__init__"
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = {}
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = package.split(".") if package and package != "__init__" else []
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("n2v_estimator"):
                module = node.module.removeprefix("n2v_estimator").lstrip(".")
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("n2v_estimator."):
                        targets[alias.name.removeprefix("n2v_estimator.")] = node.lineno
                continue
            else:
                continue
            for alias in node.names:  # ``from . import x``: the module x when there is one
                sub = f"{module}.{alias.name}" if module else alias.name
                found = (PACKAGE / sub.replace(".", "/")).with_suffix(".py").exists()
                targets[sub if found else module or "__init__"] = node.lineno
        graph[name] = {t: line for t, line in targets.items() if t != name}
    return graph


def test_every_import_runs_down_the_layers():
    """Each module imports only from its own folder or from a layer below it (``_layers.LAYERS``), so
    nothing below the estimator imports it and no lower layer reaches back up."""
    from n2v_estimator._layers import layer_of

    up = [
        f"{importer} (layer {layer_of(importer)}) imports {target} (layer {layer_of(target)}) at line {line}"
        for importer, targets in _imports().items()
        for target, line in targets.items()
        if importer.split(".")[0] != target.split(".")[0] and layer_of(importer) <= layer_of(target)
    ]
    assert not up, "\n".join(up)


def test_every_module_of_the_package_is_on_a_layer():
    from n2v_estimator._layers import LAYERS, layer_of

    for name in _imports():
        layer_of(name)
    named = [name for names in LAYERS for name in names]
    assert len(named) == len(set(named))
    assert all((PACKAGE / name).is_dir() or (PACKAGE / f"{name}.py").exists() for name in named), named


def test_the_architecture_page_lists_the_layers_from_the_top_down():
    """The page's layout names every folder and top-level module in the order of ``_layers.LAYERS``, the
    highest first, and says which module holds that order."""
    from n2v_estimator._layers import LAYERS, layer_of

    architecture = PACKAGE.parent / "docs" / "architecture.md"
    if not architecture.exists():  # installed without the repository
        return
    page = architecture.read_text()
    listed = re.findall(r"^ {6}(\w+)(?:/|\.py)\s", page, re.M)
    assert sorted(listed) == sorted(name for names in LAYERS for name in names), listed
    floors = [layer_of(name) for name in listed]
    assert floors == sorted(floors, reverse=True), list(zip(listed, floors))
    assert "n2v_estimator/_layers.py" in page


def test_the_import_graph_has_no_cycle():
    graph = _imports()
    state = {}

    def visit(name, trail):
        if state.get(name) == "done":
            return
        assert state.get(name) != "open", " -> ".join([*trail, name])
        state[name] = "open"
        for target in graph.get(name, ()):
            visit(target, [*trail, name])
        state[name] = "done"

    for name in graph:
        visit(name, [])


def test_a_layer_below_is_refused_as_an_importer_of_one_above(tmp_path):
    """The check itself: an import from a lower layer to a higher one is named."""
    from n2v_estimator._layers import layer_of

    assert layer_of("data.axes") < layer_of("predict.lazy") < layer_of("estimator") < layer_of("cli")
    assert layer_of("gateway.text") < layer_of("data.axes")
    with pytest.raises(KeyError, match="no layer"):
        layer_of("somewhere.new")


def test_no_module_imports_the_package_init():
    """``from . import x`` in a module makes it and ``__init__`` import each other."""
    for path in PACKAGE.glob("*.py"):
        if path.name != "__init__.py":
            assert not re.search(r"^from \. import", path.read_text(), re.M), path.name


def test_the_repository_stands_alone():
    """The README, benchmarks and examples point to nothing outside the repository, and carry the licence."""
    root = PACKAGE.parent
    if not README.exists():  # installed without the repository
        return
    documents = [
        README,
        root / "mkdocs.yml",
        *(
            p
            for folder in ("benchmarks", "examples", "docs")
            for p in (root / folder).rglob("*")
            if p.suffix in {".py", ".md", ".sh", ".ipynb"}
        ),
    ]
    for path in documents:
        text = path.read_text()
        assert "../shared" not in text and "ANCHORS" not in text, path
        assert not re.search(r"\bissue ?\d", text, re.I), path  # work-item names mean nothing to a reader
    assert (root / "LICENSE").read_text().startswith("BSD 3-Clause License")


def test_install_lines_work_as_written_from_a_checkout():
    """The package is not on the registry yet: an install of it is ``pip install -e ".[extras]"`` with
    extras pyproject.toml declares; the registry form only where the text says "once ... released"."""
    root = PACKAGE.parent
    if not README.exists():  # installed without the repository
        return
    import tomllib

    extras = set(tomllib.loads((root / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    documents = [
        README,
        *(root / "examples").glob("*.ipynb"),
        *(root / "examples").glob("*.py"),
        *(root / "docs").rglob("*.md"),
    ]
    checked = 0
    for path in documents:
        for paragraph in re.split(r"\n\s*\n", path.read_text().replace('\\"', '"')):
            for line in re.findall(r"pip install[^`\n]*", paragraph):
                for named in re.findall(r'-e "\.\[([^\]]*)\]"', line):
                    assert set(named.split(",")) <= extras, (path.name, line)
                    checked += 1
                if "n2v-estimator[" in line:
                    assert re.search(r"once [^.]*released", paragraph, re.I), (path.name, line)
    assert checked >= 4


def test_the_readme_is_short_and_every_documentation_page_is_reachable_from_the_index():
    """A README for users (what, install, three quickstarts, links); the rest is in docs/, whose
    pages are all in mkdocs.yml's navigation and linked from the index, and whose links resolve."""
    root = PACKAGE.parent
    if not README.exists():  # installed without the repository
        return
    assert len(README.read_text().splitlines()) <= 200
    docs = root / "docs"
    pages = {p.relative_to(docs).as_posix() for p in docs.rglob("*.md")}
    navigation = set(re.findall(r":\s*([\w/.-]+\.md)\s*$", (root / "mkdocs.yml").read_text(), re.M))
    assert pages == navigation, (pages - navigation, navigation - pages)
    index_links = set(re.findall(r"\]\(([\w/.-]+\.md)", (docs / "index.md").read_text()))
    assert pages - {"index.md"} <= index_links, pages - index_links
    for page in [README, *docs.rglob("*.md")]:  # relative links to files that exist
        for target in re.findall(r"\]\((?!https?:)([^)#\s]+)", page.read_text()):
            assert (page.parent / target).exists(), (page, target)


def test_scikit_learns_private_modules_are_imported_in_one_place():
    """scikit-learn's private parameter constraints come through _constraints only (pinned there)."""
    for path in PACKAGE.rglob("*.py"):
        if path.name != "_constraints.py":
            assert not re.search(r"^\s*(from|import) sklearn(\.\w+)*\._", path.read_text(), re.M), path.name
    from n2v_estimator import _constraints

    assert all(hasattr(_constraints, name) for name in _constraints.__all__)


def test_no_module_below_the_estimator_calls_its_private_methods():
    """Lower layers get values and callables from the estimator; they never reach into it."""
    from n2v_estimator import Noise2VoidDenoiser

    private = {name for name in dir(Noise2VoidDenoiser) if name.startswith("_") and not name.startswith("__")}
    assert {"_denoiser", "_set_fitted", "_validate_params", "_get_param_names", "_fitted_images"} <= private
    for path in PACKAGE.rglob("*.py"):
        # The estimator and its mixins; the command above it validates the parameters it is given as fit does.
        if path.name in ("estimator.py", "exchange.py") or path.parent.name == "cli":
            continue
        reached = sorted(
            {
                node.attr
                for node in ast.walk(ast.parse(path.read_text()))
                if isinstance(node, ast.Attribute) and node.attr in private
            }
        )
        assert not reached, (path.relative_to(PACKAGE), reached)

"""The package's shape: no import cycle, no module named after the standard library, names defined once."""
import ast
import subprocess
import sys

import vatp
from conftest import REPO
from vatp import names
from vatp.methods import ValueAware, get_method

PACKAGE = REPO / "vatp"


def _module_name(path):
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _top_level_imports(path):
    """The vatp modules ``path`` imports when it is imported (imports inside functions are lazy: not counted)."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def _graph():
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: sorted(m for m in _top_level_imports(path) if m in modules and m != name)
            for name, path in modules.items()}


def test_no_import_cycle():
    graph, done, path = _graph(), set(), []

    def visit(name):
        if name in path:
            raise AssertionError("import cycle: " + " -> ".join(path[path.index(name):] + [name]))
        if name in done:
            return
        path.append(name)
        for dep in graph[name]:
            if not dep.startswith(name + "."):  # a package importing its own submodules is not a cycle
                visit(dep)
        path.pop()
        done.add(name)

    for name in graph:
        visit(name)


def test_no_module_is_named_after_a_standard_library_module():
    clashes = [str(p.relative_to(REPO)) for p in PACKAGE.rglob("*.py") if p.stem in sys.stdlib_module_names]
    assert clashes == []


def test_every_registered_method_has_its_file_and_label():
    for name, label in names.METHODS.items():
        method = get_method(name)
        assert (PACKAGE / "methods" / f"{name}.py").is_file()
        assert method.name == name and method.label == label
        if not method.scores.is_attention:
            continue  # VATP refuses it (tests/test_semantics.py)
        vatp_variant = get_method(name, apval=True)
        assert isinstance(vatp_variant, ValueAware) and vatp_variant.protects_sinks
        assert vatp_variant.label == f"{names.METHODS[name]}+VATP"


def test_the_public_api_and_the_names_import_no_torch():
    assert {"enable", "disable", "enabled", "session_of", "VatpConfig", "BudgetError"} <= set(vatp.__all__)
    code = ("import sys, vatp, vatp.names, vatp.longbench.data, vatp.longbench.prompts, vatp.longbench.runs; "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert done.returncode == 0, done.stderr


def test_pred_refuses_a_bad_flag_before_importing_torch():
    code = ("import sys, importlib.util; spec = importlib.util.spec_from_file_location('pred', 'pred.py'); "
            "pred = importlib.util.module_from_spec(spec); spec.loader.exec_module(pred); "
            "code = pred.main(['--heavy_ratio', '2', '--method', 'snapkv']); "
            "assert code == 2 and 'torch' not in sys.modules, (code, 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert "--heavy_ratio must be in (0, 1]" in done.stderr

"""What a fresh install provides: every module the code imports is declared in pyproject.toml
(core or a named extra), and a command that needs an optional package refuses up front."""

import ast
import importlib.metadata
import os
import pathlib
import subprocess
import sys

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
import pytest

from fashion_jax import optional_dependencies
from tests.conftest import REPO_ROOT

try:
    import tomllib
except ImportError:  # Python 3.10: the test extra installs tomli.
    import tomli as tomllib

# Where the code that a user runs lives; tests/ is included (README's test command runs it).
SOURCES = ("fashion_jax", "bench", "configs", "tests", "run_train.py", "run_eval.py")
FIRST_PARTY = {"fashion_jax", "configs", "tests"}
# Import names of optional packages that may be absent here, whose distribution has another name
# (for installed packages the distribution's own metadata says which it provides).
DISTRIBUTIONS_OF_ABSENT_MODULES = {"tensorflow": ["tensorflow-cpu"]}


def imported_modules(paths) -> dict:
    """{top-level module: [files importing it]} over the .py files under `paths`; absolute
    imports only, the standard library and a script's modules beside it (bench/) left out."""
    found = {}
    files = []
    for path in map(pathlib.Path, paths):
        files += sorted(path.rglob("*.py")) if path.is_dir() else [path]
    for file in files:
        if "fixtures" in file.parts:
            continue
        for node in ast.walk(ast.parse(file.read_text(), str(file))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                beside = (file.parent / f"{top}.py").is_file()
                if top not in sys.stdlib_module_names and top != "__future__" and not beside:
                    found.setdefault(top, []).append(str(file))
    return found


def declared_distributions(pyproject: dict) -> dict:
    """{canonical distribution name: "core" or the extra's name} from pyproject.toml, extras that
    name the project itself (fashion_jax[kaggle]) resolved."""
    project = pyproject["project"]
    own = canonicalize_name(project["name"])
    declared = {canonicalize_name(Requirement(r).name): "core" for r in project["dependencies"]}
    for extra, requirements in project.get("optional-dependencies", {}).items():
        for text in requirements:
            name = canonicalize_name(Requirement(text).name)
            if name != own:
                declared.setdefault(name, extra)
    return declared


def providers(module: str) -> list:
    """Canonical names of the distributions that provide `module`."""
    installed = importlib.metadata.packages_distributions().get(module)
    names = installed or DISTRIBUTIONS_OF_ABSENT_MODULES.get(module) or [module]
    return [canonicalize_name(n) for n in names]


def undeclared_imports(paths, pyproject: dict) -> dict:
    """{module: files} of imports that no declared distribution provides."""
    declared = declared_distributions(pyproject)
    return {
        module: files
        for module, files in imported_modules(paths).items()
        if module not in FIRST_PARTY and not any(d in declared for d in providers(module))
    }


def read_pyproject() -> dict:
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())


def test_every_imported_module_is_declared_in_pyproject():
    missing = undeclared_imports([REPO_ROOT / s for s in SOURCES], read_pyproject())
    assert not missing, f"imported but not declared in pyproject.toml (core or an extra): {missing}"


def test_the_declaration_check_finds_an_undeclared_import(tmp_path):
    (tmp_path / "a.py").write_text("import cleanlab.filter\nfrom numpy import linalg\nimport os\n")
    pyproject = read_pyproject()
    assert undeclared_imports([tmp_path], pyproject) == {}
    pyproject["project"]["dependencies"] = [
        r for r in pyproject["project"]["dependencies"] if not r.startswith("cleanlab")
    ]
    assert undeclared_imports([tmp_path], pyproject) == {"cleanlab": [str(tmp_path / "a.py")]}
    (tmp_path / "b.py").write_text("def f():\n    import not_a_declared_package\n")
    assert "not_a_declared_package" in undeclared_imports([tmp_path], pyproject)


def test_extras_that_name_the_project_count_as_declared():
    declared = declared_distributions(read_pyproject())
    assert declared["kagglehub"] == "kaggle"
    assert declared["jax2onnx"] == "export"
    assert declared["cleanlab"] == "core" and declared["tensorboard"] == "core"


def run_with_modules_missing(folder, modules, *args, startup="", env=None):
    """Runs Python with `args` in `folder`, where `modules` cannot be imported (a sitecustomize
    on PYTHONPATH that refuses them, as if they were not installed; `startup` is added to it)."""
    blocker = folder / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(
        "import importlib.abc, sys\n"
        f"BLOCKED = {set(modules)!r}\n"
        "class Missing(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name.split('.')[0] in BLOCKED:\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, Missing())\n" + startup
    )
    env = dict(env or os.environ, PYTHONPATH=os.pathsep.join([str(blocker), str(REPO_ROOT)]))
    return subprocess.run(
        [sys.executable, *args], cwd=folder, env=env, capture_output=True, text=True, timeout=300
    )


def test_export_without_jax2onnx_is_refused_before_any_workdir_is_read(tmp_path):
    # The workdir does not exist: a refusal that names it would show the workdir was read first.
    result = run_with_modules_missing(
        tmp_path,
        ["jax2onnx"],
        str(REPO_ROOT / "run_eval.py"),
        f"--workdirs={tmp_path / 'no_such_run'}",
        f"--export={tmp_path / 'exported'}",
    )
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last == (
        "run_eval.py: --export (model.onnx) needs jax2onnx, which is not installed: run "
        'pip install -e ".[export]" (in the checkout) and try again.'
    ), result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "exported").exists()


def test_the_blocker_really_hides_a_module(tmp_path):
    result = run_with_modules_missing(
        tmp_path,
        ["kagglehub"],
        "-c",
        "from fashion_jax import optional_dependencies as o; print(o.is_installed('kagglehub'))",
    )
    assert result.stdout.strip() == "False", result.stderr[-2000:]


def test_training_without_the_data_and_without_kagglehub_is_refused_before_any_work(tmp_path):
    """No copy anywhere (a fake checkout, home and kagglehub cache), kagglehub not installed: one
    line with the install command, exit 1, nothing written into the workdir."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FASHION_DATA", "KAGGLE"))}
    env.update(HOME=str(tmp_path / "home"), KAGGLEHUB_CACHE=str(tmp_path / "kagglehub"))
    startup = (
        "import pathlib\nimport fashion_jax.data.locate as locate\n"
        f"locate.CHECKOUT = pathlib.Path({str(tmp_path / 'checkout')!r})\n"
    )
    workdir = tmp_path / "run"
    result = run_with_modules_missing(
        tmp_path,
        ["kagglehub"],
        str(REPO_ROOT / "run_train.py"),
        f"--config={REPO_ROOT / 'configs' / 'tiny.py'}",
        f"--workdir={workdir}",
        startup=startup,
        env=env,
    )
    assert result.returncode == 1, result.stderr[-3000:]
    first = next(line for line in result.stderr.splitlines() if line.startswith("run_train.py:"))
    assert first == (
        "run_train.py: The dataset is in none of the places tried, and downloading it needs "
        'kagglehub, which is not installed: run pip install -e ".[kaggle]", put a Kaggle API '
        "token in ~/.kaggle/kaggle.json and run the same command again, or pass "
        "--config.data.data_dir=<folder>. Tried:"
    )
    assert "Traceback" not in result.stderr
    assert not workdir.exists() or not any(workdir.iterdir())


def test_require_names_every_missing_package_and_one_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "jax2onnx", None)
    monkeypatch.setitem(sys.modules, "kagglehub", None)
    with pytest.raises(optional_dependencies.MissingDependencyError) as raised:
        optional_dependencies.require(["jax2onnx", "onnxruntime", "kagglehub"], "this")
    assert str(raised.value) == (
        "this needs jax2onnx and kagglehub, which are not installed: run pip install -e "
        '".[export,kaggle]" (in the checkout) and try again.'
    )
    optional_dependencies.require(["onnxruntime"], "this")  # Installed: nothing raised.

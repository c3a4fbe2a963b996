"""The repository's own folders never shadow an installed package, and the kernels have one import identity.

Python puts the working directory first on `sys.path` (`python -m pytest`, `python -m bench...`, a user's `python` in
the checkout), so a top-level folder or module of ours with the import name of an installed distribution would hide
that distribution from everything that imports it (transformers imports Hugging Face's `kernels`). The guard reads
every installed distribution's top-level names from importlib.metadata and resolves each shared name the way the
import system would with the repository first on the path.
"""
import importlib.machinery
import importlib.metadata
import os
import subprocess
import sys
import textwrap

import pytest

from _util import REPO


def top_level_names(root: str) -> dict[str, str]:
    """{import name: path} of what `root` offers as top-level imports: folders and `*.py` modules."""
    names = {}
    for entry in sorted(os.listdir(root)):
        path = os.path.join(root, entry)
        if entry.startswith((".", "_")):
            continue
        if os.path.isdir(path) and entry.isidentifier():
            names[entry] = path
        elif entry.endswith(".py") and entry[:-3].isidentifier():
            names[entry[:-3]] = path
    return names


def shadowed(root: str, own: str = "wizardcoder") -> list[str]:
    """The installed distributions' top-level names that, with `root` first on sys.path, resolve into `root`: a
    regular package or module of ours shadows outright; a folder without `__init__.py` only when the installed name
    is itself a namespace (they merge). Our own distribution is left out."""
    installed = {name for name, dists in importlib.metadata.packages_distributions().items()
                 if any(d.lower() != own for d in dists)}
    rest = [p for p in sys.path if os.path.abspath(p or ".") != os.path.abspath(root)]
    bad = []
    for name, path in top_level_names(root).items():
        if name not in installed or name == own:
            continue
        spec = importlib.machinery.PathFinder.find_spec(name, [root, *rest])
        if spec is None:
            continue
        places = [spec.origin] if spec.origin else []
        places += list(spec.submodule_search_locations or [])
        if any(os.path.abspath(p).startswith(os.path.abspath(path)) for p in places if p):
            bad.append(f"{name} ({os.path.relpath(path, root)} shadows the installed "
                       f"{', '.join(importlib.metadata.packages_distributions()[name])})")
    return bad


def test_no_top_level_folder_or_module_shadows_an_installed_distribution():
    assert shadowed(REPO) == []


def test_the_guard_fails_on_a_deliberately_shadowing_folder(tmp_path):
    regular = tmp_path / "transformers"  # a regular package named like an installed distribution
    regular.mkdir()
    (regular / "__init__.py").write_text("")
    (tmp_path / "numpy.py").write_text("")  # a module
    (tmp_path / "kernels").mkdir()  # a namespace portion: the installed regular package wins over it
    (tmp_path / "kernels" / "layernorm.py").write_text("")
    found = shadowed(str(tmp_path))
    assert [s.split()[0] for s in found] == ["numpy", "transformers"], found


def test_transformers_and_our_kernels_import_from_the_repository_root():
    """The break of 2026-12-03: from the checkout, transformers' `import kernels` found our folder."""
    code = textwrap.dedent("""
        import os, sys
        from transformers import GPTBigCodeForCausalLM  # imports Hugging Face's `kernels` when installed
        import wizardcoder.kernels.layernorm as ln, wizardcoder.kernels.flash_attention as fa
        assert os.path.dirname(ln.__file__) == os.path.dirname(fa.__file__)
        assert os.path.basename(os.path.dirname(ln.__file__)) == "kernels"
        assert not any(m == "kernels.layernorm" for m in sys.modules), "a second identity of our kernels"
        print(os.path.dirname(ln.__file__))
    """)
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert os.path.samefile(out.stdout.strip(), os.path.join(REPO, "kernels"))


def test_a_wheel_installs_the_kernels_inside_the_package(tmp_path):
    """A non-editable install: the wheel's wizardcoder/kernels/ holds every file of the top-level kernels/ folder."""
    pytest.importorskip("setuptools")
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                          "-w", str(tmp_path), REPO], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    if out.returncode != 0 and "No module named pip" in out.stderr:
        pytest.skip("pip is not installed in this interpreter")
    assert out.returncode == 0, out.stderr[-3000:]
    import zipfile

    (wheel,) = [f for f in os.listdir(tmp_path) if f.endswith(".whl")]
    with zipfile.ZipFile(tmp_path / wheel) as z:
        packaged = {n.split("/")[-1] for n in z.namelist() if n.startswith("wizardcoder/kernels/")}
        assert not any(n.startswith("kernels/") for n in z.namelist()), "the wheel must not ship a top-level kernels"
    ours = {f for f in os.listdir(os.path.join(REPO, "kernels")) if f.endswith(".py")}
    assert ours and ours | {"__init__.py"} == packaged

"""The committed notebooks follow the conventions: one literal `parameters` cell, no outputs, kernel python3, and a
jupytext py:percent twin with the same code; every profile fits the notebooks' parameters."""
import ast
import io
import tokenize
from pathlib import Path

import nbformat
import pytest

from mudiff.data.prepare import split_counts
from mudiff.reproduce import NOTEBOOK_DIR, PROFILE_DIR, discover, load_profile, notebook_parameters, parameters_cell

NOTEBOOKS = discover(NOTEBOOK_DIR)
REQUIRED = ("SEED", "DEVICE", "QUICK", "FIGURES")


def test_the_first_notebooks_are_there():
    assert [p.stem for p in NOTEBOOKS[:3]] == ["00_data_prep", "01_training", "02_sampling"]
    assert len({p.name[:2] for p in NOTEBOOKS}) == len(NOTEBOOKS), "two notebooks share a prefix"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_one_parameters_cell_of_commented_literals(path):
    _, source = parameters_cell(path)  # exactly one, or ValueError
    tree = ast.parse(source)
    commented = {tok.start[0] for tok in tokenize.generate_tokens(io.StringIO(source).readline)
                 if tok.type == tokenize.COMMENT}
    names = []
    for node in tree.body:
        assert isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name), \
            f"{path.name}, line {node.lineno}: only `NAME = literal` assignments belong in the parameters cell"
        ast.literal_eval(node.value)  # raises on anything but a literal
        assert node.lineno == node.end_lineno, f"{path.name}: {node.targets[0].id} must fit on one line"
        assert node.lineno in commented, f"{path.name}: {node.targets[0].id} needs a `# comment` on its line"
        names.append(node.targets[0].id)
    code_lines = [line for line in source.splitlines() if line.strip() and not line.strip().startswith("#")]
    assert len(code_lines) == len(names), f"{path.name}: one parameter per line"
    assert len(set(names)) == len(names), f"{path.name}: a parameter is assigned twice"
    for name in REQUIRED:
        assert name in names, f"{path.name} lacks the parameter {name}"
    assert any(n.startswith("RUN_DIR") for n in names), f"{path.name} lacks the run folder parameter RUN_DIR"
    assert notebook_parameters(path)["DEVICE"] == "auto"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_papermill_sees_every_parameter(path):
    """papermill skips a line holding two `=` (e.g. in its comment): --help-notebook must list them all."""
    import papermill as pm

    assert list(pm.inspect_notebook(str(path))) == list(notebook_parameters(path))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_without_outputs_and_with_kernel_python3(path):
    nb = nbformat.read(str(path), as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    assert nb.metadata.kernelspec.language == "python"
    for k, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name}: cell {k} carries outputs"
            assert cell.execution_count is None, f"{path.name}: cell {k} carries an execution count"
    index, _ = parameters_cell(path)
    later = [c for c in nb.cells[index + 1:] if c.cell_type == "code"]
    assert later and "mudiff" in "\n".join(c.source for c in later), f"{path.name} does not use the package"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_jupytext_twin_in_sync(path):
    import jupytext

    twin = path.with_suffix(".py")
    assert twin.is_file(), f"{path.name} has no py:percent twin {twin.name}"
    nb = nbformat.read(str(path), as_version=4)
    assert "py:percent" in nb.metadata.get("jupytext", {}).get("formats", ""), f"{path.name} is not paired"
    text = jupytext.read(twin, fmt="py:percent")
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    assert [c.source for c in text.cells if c.cell_type == "code"] == code, \
        f"{twin.name} and {path.name} differ; run `jupytext --sync {path}`"
    tags = [c.metadata.get("tags", []) for c in text.cells if c.cell_type == "code"]
    assert tags.count(["parameters"]) == 1


def _compatible(value, default) -> bool:
    if default is None or value is None:
        return True
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(default, bool) and isinstance(value, bool)
    if isinstance(default, (int, float)):
        return isinstance(value, (int, float))
    return isinstance(value, type(default))


@pytest.mark.parametrize("profile", sorted(p.stem for p in PROFILE_DIR.glob("*.yaml")))
def test_profiles_fit_the_notebooks(profile):
    prof = load_profile(profile)
    declared = {p.stem: notebook_parameters(p) for p in NOTEBOOKS}
    missing = set(prof.notebooks) - set(declared)
    assert not missing, f"profile {profile} has sections for missing notebooks: {missing}"
    for key in ("SEED", "DEVICE", "QUICK", "FIGURES", "RUN_DIR"):
        assert key in prof.common, f"profile {profile} does not set {key} for all notebooks"
    for stem, params in declared.items():
        given = {**{k: v for k, v in prof.common.items() if k in params}, **prof.notebooks.get(stem, {})}
        for name, value in given.items():
            assert name in params, f"profile {profile}, {stem}: unknown parameter {name}"
            assert _compatible(value, params[name]), \
                f"profile {profile}, {stem}: {name}={value!r} does not match the default {params[name]!r}"


def test_quick_profile_is_the_demo():
    prof = load_profile("quick")
    prep = {**prof.common, **prof.notebooks["00_data_prep"]}
    assert (prep["N_SUBJECTS"], prep["RESOLUTION"], prep["SIZE"], prep["SLICES"], prep["SEED"]) == (14, 2.0, 64, 40, 0)
    assert split_counts(prep["N_SUBJECTS"], prep["SPLIT"]) == [8, 3, 3], "a test split of several subjects"
    assert (prep["DATA_DIR"], prep["SLICES_DIR"], prep["FIGURES"]) == ("data/phantom", "data/phantom_slices", "figures")
    assert prof.notebooks["01_training"]["CONFIG"] == "configs/quick.yaml" and prof.common["RUN_DIR"] == "runs/quick"
    assert Path(PROFILE_DIR.parent / "quick.yaml").is_file() and Path(PROFILE_DIR.parent / "brats.yaml").is_file()


def test_notebooks_work_in_the_project_root_when_started_in_notebooks(tmp_path, monkeypatch):
    """JupyterLab starts a kernel in the notebook's folder: relative parameters must still name the root's folders."""
    from mudiff.display import explore

    (tmp_path / "configs").mkdir()
    (tmp_path / "notebooks").mkdir()
    monkeypatch.chdir(tmp_path / "notebooks")
    assert explore.start_notebook(interactive=True) == tmp_path and Path.cwd() == tmp_path
    elsewhere = tmp_path / "elsewhere" / "notebooks"  # a "notebooks" folder outside a project stays put
    elsewhere.mkdir(parents=True)
    monkeypatch.chdir(elsewhere)
    assert explore.start_notebook(interactive=True) == elsewhere


# ---- the explorers behind the notebooks: interactive (widgets) and headless (static figure) ---------------------
def test_slice_explorer_widgets_and_static_figure(tiny_slices, tmp_path, monkeypatch):
    from mudiff.display import explore

    drawn = []  # outside a kernel an Output widget captures nothing: record the figures it is given instead
    monkeypatch.setattr(explore, "show_figure", drawn.append)
    box = explore.slice_explorer(tiny_slices, interactive=True)
    (subject, slider, overlay), contrast, output = box.children[0].children, box.children[1], box.children[2]
    subject.value = subject.options[-1]
    slider.value = slider.max
    contrast.value = contrast.options[0]
    overlay.value = False
    assert len(drawn) == 5, "every change redraws once"
    assert len(drawn[-1].axes) == 2 and len(drawn[0].axes) == len(contrast.options)  # one contrast / all + mask

    fig = explore.slice_explorer(tiny_slices, interactive=False, out=tmp_path / "explorer.png")
    assert (tmp_path / "explorer.png").is_file() and (tmp_path / "explorer.csv").is_file()
    store = explore.SliceStore(tiny_slices)
    assert len(fig.axes) == 4 * (len(store.contrasts) + 1)
    counts = store.split_counts().set_index("split")
    assert counts.loc["total", "slices"] == len(store.table) == counts.loc[["train", "val", "test"], "slices"].sum()


def test_synthesis_explorer_and_live_plot(tiny_run, tiny_slices, tmp_path, monkeypatch):
    from mudiff.data.dataset import TaskDataset
    from mudiff.display import explore
    from mudiff.sample import Sampler
    from mudiff.train import read_stats

    sampler = Sampler.from_checkpoint(tiny_run, device="cpu")
    test_set = TaskDataset(tiny_slices, sampler.cfg.data.task, "test")
    drawn = []
    monkeypatch.setattr(explore, "show_figure", drawn.append)
    box = explore.synthesis_explorer(sampler, test_set, interactive=True)
    slider, seed = box.children[0].children
    slider.value = 0 if slider.value else 1
    seed.value = 5
    assert len(drawn) == 3 and all(len(f.axes) == 10 for f in drawn)  # 3 sources, GT, 3 predictions, 3 errors

    explore.synthesis_explorer(sampler, test_set, interactive=False, out=tmp_path / "syn.png", seeds=(0, 1))
    table = __import__("pandas").read_csv(tmp_path / "syn.csv")
    assert len(table) == 2 and (table.filter(like="mae_brain").to_numpy() >= 0).all()

    live = explore.LivePlot(interactive=True, every_s=0.0)
    for record in read_stats(tiny_run / "stats.jsonl"):
        live(record)
    assert live._last > 0, "an interactive live plot draws"
    assert len(live.figure().axes[0].lines) == 3 and "val PSNR" in live.figure().axes[0].get_title()
    silent = explore.LivePlot(interactive=False)
    silent({"step": 1, "loss_g": 1.0})
    assert silent._last == 0 and silent.records

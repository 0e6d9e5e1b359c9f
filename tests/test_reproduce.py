"""reproduce(): every notebook runs headless with the `test` profile; the first failure stops the run and names
the executed notebook."""
import hashlib
import json
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from mudiff.display import explore
from mudiff.reproduce import NOTEBOOK_DIR, NotebookFailed, discover, load_profile, notebook_parameters, reproduce

EXPECTED = {
    "00_data_prep": ["00_data_overview.png", "00_histograms.png", "00_histograms.csv", "00_split.csv",
                     "00_explorer.png"],
    "01_training": ["01_training_curves.png", "01_training_curves.csv", "01_val_psnr.csv", "01_val_psnr.json",
                    "01_val_psnr.png"],
    "02_sampling": ["02_synthesis.png", "02_synthesis.csv", "02_synthesis_metrics.csv", "02_volume.png",
                    "02_explorer.png", "02_uncertainty.png", "02_uncertainty.json", "02_uncertainty_scores.csv"],
    "10_unpaired_mri_ct": ["10_head.png", "10_hu_histograms.csv", "10_training_curves.png", "10_mr_to_ct_table.csv",
                           "10_ct_to_mr_table.csv", "10_mr_to_ct_boxes.png", "10_mr_to_ct_examples.png",
                           "10_ct_to_mr_examples.png", "10_explorer_mr_to_ct.png"],
    "11_class_conditional_generation": ["11_class_counts.csv", "11_real_classes.png", "11_sample_grid.png",
                                        "11_metrics.csv", "11_nearest.png", "11_guidance_explorer.png"],
    "13_phantom_study": ["phantom_study/phantom_study.md", "phantom_study/phantom_study_claims.png",
                         "phantom_study/phantom_study_claims.csv", "phantom_study/phantom_study_validation.png",
                         "phantom_study/phantom_study_uncertainty.png"],
}
WIDGET = "application/vnd.jupyter.widget-view+json"


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def _notebook(path: Path, *sources: str, parameters: str = "SEED = 0  # seed\n") -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(parameters, metadata={"tags": ["parameters"]}),
                *(nbformat.v4.new_code_cell(s) for s in sources)]
    nbformat.write(nb, str(path))
    return path


def test_test_profile_runs_every_notebook(tmp_path, capsys):
    sources_before = _digest(NOTEBOOK_DIR)
    folder = reproduce("test", workdir=tmp_path)

    assert folder.parent == tmp_path / "papermill_runs" and folder.name.endswith("-test")
    assert _digest(NOTEBOOK_DIR) == sources_before, "the source notebooks were written"
    notebooks = discover(NOTEBOOK_DIR)
    for source in notebooks:
        executed = folder / source.name
        assert executed.is_file(), f"{executed} missing"
        nb = nbformat.read(str(executed), as_version=4)
        outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
        assert not [o for o in outputs if o.output_type == "error"]
        assert not [o for o in outputs if WIDGET in o.get("data", {})], f"{source.name} left widgets headless"
        assert any("image/png" in o.get("data", {}) for o in outputs), f"{source.name} shows no figure"
        injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
        assert len(injected) == 1
        if "INTERACTIVE" in notebook_parameters(source):
            assert "INTERACTIVE = False" in injected[0].source

    figures = tmp_path / "figures"
    for stem, names in EXPECTED.items():
        for name in names:
            assert (figures / name).is_file(), f"{stem} did not write figures/{name}"
    summary = pd.read_csv(folder / "summary.csv")
    assert list(summary["notebook"]) == [p.stem for p in notebooks]
    assert (summary["status"] == "ok").all()
    counts = dict(zip(summary["notebook"], summary["figures"]))
    for stem, names in EXPECTED.items():
        assert counts[stem] >= sum(n.endswith(".png") for n in names)
    out = capsys.readouterr().out
    assert "00_data_prep" in out and str(folder) in out

    split = pd.read_csv(figures / "00_split.csv").set_index("split")
    assert split.loc["total", "subjects"] == 4 and split.loc["test", "subjects"] == 1
    val = json.loads((figures / "01_val_psnr.json").read_text())
    assert {"mutual", "copy_best"} <= {r["prediction"] for r in val}
    samples = list((tmp_path / "runs" / "test" / "samples").glob("*_t1ce_synthetic.nii.gz"))
    assert len(samples) == 1


def test_failure_stops_the_run_and_names_the_executed_notebook(tmp_path, capfd):
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    _notebook(notebooks / "00_first.ipynb", "from pathlib import Path\nPath('first.done').write_text(str(SEED))")
    _notebook(notebooks / "01_fails.ipynb", "raise RuntimeError('boom from the notebook')")
    _notebook(notebooks / "02_after.ipynb", "from pathlib import Path\nPath('after.done').write_text('ran')")
    before = _digest(notebooks)
    profile = tmp_path / "tiny.yaml"
    profile.write_text("common:\n  SEED: 7\n")
    work = tmp_path / "work"

    with pytest.raises(NotebookFailed) as info:
        reproduce(str(profile), workdir=work, notebook_dir=notebooks)

    folder = next((work / "papermill_runs").iterdir())
    failed = folder / "01_fails.ipynb"
    assert info.value.executed == failed
    log = capfd.readouterr()
    assert "01_fails" in log.err and "without encryption" not in log.out + log.err  # the kernels' start-up warning
    assert str(failed) in str(info.value) and "boom from the notebook" in str(info.value)
    nb = nbformat.read(str(failed), as_version=4)
    assert any(o.output_type == "error" for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert (work / "first.done").read_text() == "7", "parameters from the profile, cwd = workdir"
    assert not (work / "after.done").exists() and not (folder / "02_after.ipynb").exists()
    assert _digest(notebooks) == before
    assert list(pd.read_csv(folder / "summary.csv")["status"]) == ["ok", "failed"]


def test_bad_profiles_and_selections_fail_before_running(tmp_path):
    with pytest.raises(FileNotFoundError, match="known profiles"):
        reproduce("no_such_profile", workdir=tmp_path)
    bad = tmp_path / "bad.yaml"
    bad.write_text("common:\n  SEED: 0\n01_training:\n  EPOCHS: 3\n")
    with pytest.raises(ValueError, match="EPOCHS"):
        reproduce(str(bad), workdir=tmp_path)
    bad.write_text("common:\n  SEED: 0\n99_missing:\n  SEED: 1\n")
    with pytest.raises(ValueError, match="99_missing"):
        reproduce(str(bad), workdir=tmp_path)
    with pytest.raises(ValueError, match="matches 0"):
        reproduce("test", workdir=tmp_path, notebooks=["77"])
    assert not (tmp_path / "papermill_runs").exists()


def test_parameters_must_be_literals(tmp_path):
    good = _notebook(tmp_path / "00_a.ipynb", "pass", parameters='SEED = 0  # s\nNAMES = ["a", 1]  # n\n')
    assert notebook_parameters(good) == {"SEED": 0, "NAMES": ["a", 1]}
    bad = _notebook(tmp_path / "01_b.ipynb", "pass", parameters="import os  # no\nSEED = 0  # s\n")
    with pytest.raises(ValueError, match="only assign literals"):
        notebook_parameters(bad)
    derived = _notebook(tmp_path / "02_c.ipynb", "pass", parameters="SEED = 1 + len('ab')  # s\n")
    with pytest.raises(ValueError, match="not a literal"):
        notebook_parameters(derived)


def test_profile_format():
    prof = load_profile("test")
    assert prof.name == "test" and prof.common["INTERACTIVE"] is False
    assert all(stem[:2].isdigit() for stem in prof.notebooks)


def test_interactivity_decision(monkeypatch):
    monkeypatch.delenv(explore.HEADLESS_ENV, raising=False)
    assert explore.is_interactive(True) and not explore.is_interactive(False)
    assert not explore.is_interactive(None)  # pytest is no Jupyter kernel
    monkeypatch.setenv(explore.HEADLESS_ENV, "1")
    assert not explore.is_interactive(None) and explore.is_interactive(True)


def test_the_demo_config_reaches_only_the_mudiff_training_notebook():
    # run_demo passes CONFIG to every notebook that declares it: only 01 may (10-12 train other systems, each with
    # its own *_CONFIG; a shared name gave them the MU-Diff config and `make demo` failed at notebook 10)
    declaring = [nb.stem for nb in discover() if "CONFIG" in notebook_parameters(nb)]
    assert declaring == ["01_training"]


def test_the_demo_checks_its_config_before_running_any_notebook(tmp_path, capsys):
    from mudiff import cli

    assert cli.main(["demo", "--workdir", str(tmp_path), "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml does not exist" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # no phantom, no slices, no executed notebook

"""examples/quickstart.ipynb runs top to bottom, so that it never rots."""

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("matplotlib")

NOTEBOOK = Path(__file__).parent.parent / "examples" / "quickstart.ipynb"


@pytest.mark.slow
def test_the_quickstart_notebook_runs_and_denoises(tmp_path):
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(
        notebook, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    streams = "".join(
        output.get("text", "") for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs
    )
    psnr = [line for line in streams.splitlines() if line.startswith("PSNR")]
    noisy, denoised = (float(part.split()[-2]) for part in psnr[0].split(":")[1].split(","))
    assert denoised > noisy + 4, psnr  # a short run still gains several dB
    assert "reloaded model gives the same result" in streams
    widgets = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs
               if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]  # fmt: skip
    assert "fit: 100%" in streams or widgets  # the progress bar was shown: as text, or as a widget
    assert "IProgress not found" not in streams  # the [plot] extra (and [test]) install ipywidgets
    figures = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
    assert len(figures) == 2  # before/after and the training curve
    assert (tmp_path / "quickstart_model.safetensors").exists()

"""The documentation site builds with warnings as errors: broken links, pages left out of the
navigation and docstrings the API reference cannot read all fail it. The README's numbers are the
claims benchmarks/claims.py measures."""

import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).parent.parent


@pytest.mark.slow
def test_the_documentation_builds_with_warnings_as_errors(tmp_path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings_handlers.python")
    if not (ROOT / "mkdocs.yml").exists():
        pytest.skip("installed without the repository")
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    for name in (
        "Noise2VoidDenoiser",
        "plot_history",
        "masked_pixel_percentage",
        "export_bioimageio",
        "from_bioimageio",
    ):
        assert name in api, name  # the reference is generated from the docstrings


def _claims():
    import importlib.util

    path = ROOT / "benchmarks" / "claims.py"
    if not path.exists():
        pytest.skip("installed without the repository")
    spec = importlib.util.spec_from_file_location("claims", path)
    claims = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = claims  # its dataclass looks its module up there
    spec.loader.exec_module(claims)
    return claims


def test_every_row_of_the_readmes_run_table_is_a_claim_the_benchmark_measures():
    """The README's times and PSNRs come from benchmarks/claims.py: each row is one of its claims,
    each cell a PSNR and a time, and the machine they were measured on is named under the table."""
    claims = _claims()
    rows, machine = claims.readme_table()
    assert set(rows) == {claim.row for claim in claims.CLAIMS if claim.row}
    for claim in claims.CLAIMS:
        assert hasattr(claims, f"measure_{claim.name}"), claim.name
        if claim.slower:
            assert len(re.findall(claim.slower, " ".join(claims.README.read_text().split()))) == 1, claim.slower
    assert machine and "benchmarks/claims.py" in machine and re.search(r"\d+ cores", machine)
    for row in rows.values():
        for psnr, seconds in (row["bf16"], row["32"]):
            assert 20 < psnr < 40 and seconds > 0


def test_the_demos_printed_psnr_is_the_one_the_readme_states(tmp_path):
    """examples/denoise_camera.py prints 'PSNR noisy N dB -> denoised M dB'; the README's table states
    M for each kind of CPU to the same two decimals, and the noisy PSNR above it."""
    claims = _claims()
    rows, _ = claims.readme_table()
    demo = rows[claims.BY_NAME["demo"].row]
    readme = claims.README.read_text()
    for psnr, _ in (demo["bf16"], demo["32"]):
        assert re.search(rf"\| {psnr:.2f} dB, ", readme)  # stated to the printed precision
    example = (ROOT / "examples" / "denoise_camera.py").read_text()
    assert 'print(f"PSNR noisy {before:.2f} dB -> denoised {after:.2f} dB")' in example
    clean, noisy = claims.camera_case()
    assert f"seed 0: {claims.psnr(noisy, clean):.2f} dB" in readme


def test_the_install_lines_name_the_extras_pyproject_defines_and_all_is_what_they_say():
    """README's and the docs' install blocks: every extra a line names exists, every extra for users
    has a line, and "[all]" holds what its comment says (everything above but napari)."""
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for_users = set(extras) - {"test", "docs", "compare", "all"}
    (inside_all,) = extras["all"]
    all_holds = set(re.search(r"\[(.*)\]", inside_all).group(1).split(","))
    assert all_holds == for_users - {"napari"}, all_holds
    for page in (ROOT / "README.md", ROOT / "docs" / "index.md"):
        lines = re.findall(r'^pip install -e "?\.(?:\[([\w,]+)\])?"?\s+# (.*)$', page.read_text(), re.M)
        named = {extra for group, _ in lines for extra in group.split(",") if extra}
        assert named <= set(extras) and for_users <= named, (page.name, named)
        comment = dict(lines)["all"]
        assert "all of the above but napari" in comment, (page.name, comment)

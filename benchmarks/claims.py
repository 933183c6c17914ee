"""The numbers the README states, measured; and the quality checks the test suite leaves here.

The README's table "What a run takes" states, for each run a newcomer starts, the PSNR it reaches
and the time it takes on two kinds of CPU: with native bfloat16 (AVX-512 BF16 or AMX, where
``precision="auto"`` trains in bfloat16) and without (float32). This script runs each of them the
way the README says (the set-up's example as a command, the quickstart's calls, the notebook as
written) and compares. A CPU without native bfloat16 is emulated on one that has it by switching
its detection off: the arithmetic is then float32, as there.

The quality checks need hundreds of training steps, too many for the test suite: a distributed
fit reaches the single process's PSNR; the calibration guard catches a one-sigma noise model of
Poisson noise on a dark image, and one of speckle.

    python benchmarks/claims.py --list
    python benchmarks/claims.py                       # everything: about an hour on 2 cores
    python benchmarks/claims.py --only demo first_try --bf16 on
    python benchmarks/claims.py --check               # exit status 1 when a measurement misses
    python benchmarks/claims.py --check --recorded    # the recorded measurements against the README

``--check`` compares each PSNR with the README's: within 0.05 dB for the seeded runs (the demo and
the notebook: the same precision and seed give the same training up to the CPU's rounding), 0.3 dB
for the quickstart's calls, which the README writes without ``random_state`` (each run draws its
own seed). Each time is compared with the README's for the same kind of CPU (at most 1.5 times it;
a time measured on another CPU model than the README names is reported, not judged). Every run appends a JSON line with the machine to ``--out``
(``benchmarks/results/claims.jsonl``) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
NOTEBOOK = ROOT / "examples" / "quickstart.ipynb"
# The README's table: a heading, then rows "| label | steps | PSNR, time | PSNR, time |".
TABLE_HEADING = "### What a run takes"
TIME_FACTOR = 1.5


def camera_case():
    """scikit-image's camera and the README quickstart's noisy copy (Gaussian, sigma 25, seed 0)."""
    from skimage import data

    return data.camera(), data.camera() + np.random.default_rng(0).normal(0, 25, (512, 512))


def psnr(estimate, clean):
    mse = np.mean((np.asarray(estimate, np.float64) - np.asarray(clean, np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / mse))


# ------------------------------------------------------------------ measurements
# Each runs in a process of its own (``--measure NAME``), with native bfloat16 switched off there
# for the float32 column, and returns a dict: "psnr" and "seconds" for a README row.


def _fit_transform(**params):
    from n2v_estimator import Noise2VoidDenoiser

    clean, noisy = camera_case()
    start = time.perf_counter()
    denoised = Noise2VoidDenoiser(**params).fit_transform(noisy)
    return {"psnr": psnr(denoised, clean), "seconds": time.perf_counter() - start, "psnr_noisy": psnr(noisy, clean)}


def measure_first_try():
    return _fit_transform(max_epochs=4)


def measure_defaults():
    return _fit_transform()


def measure_probabilistic():
    return _fit_transform(noise_model="gaussian")


def measure_demo():
    """The set-up's first command as a newcomer runs it: the whole process, start-up included."""
    from n2v_estimator.runtime.compute import _cpu_has_native_bf16

    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        done = _python(
            [str(ROOT / "examples" / "denoise_camera.py"), "--out", out],
            capture=True,
            native_bf16=_cpu_has_native_bf16(),
        )  # as this worker was told
        seconds = time.perf_counter() - start
    printed = re.search(r"PSNR noisy ([\d.]+) dB -> denoised ([\d.]+) dB", done.stdout)
    return {
        "psnr": float(printed.group(2)),
        "seconds": seconds,
        "psnr_noisy": float(printed.group(1)),
        "printed": printed.group(0),
    }


def measure_demo_loaded():
    """The demo again, while two other processes keep both cores busy (a shared or busy machine)."""
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        return measure_demo()
    finally:
        for process in busy:
            process.kill()


def measure_notebook():
    """examples/quickstart.ipynb as written, top to bottom (its kernel started and stopped)."""
    import nbclient
    import nbformat

    from n2v_estimator.runtime.compute import _cpu_has_native_bf16

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    if not _cpu_has_native_bf16():  # as this worker was told: the kernel too
        switch = "import n2v_estimator.runtime.compute as c\nc._cpu_has_native_bf16 = lambda: False"
        notebook.cells.insert(0, nbformat.v4.new_code_cell(switch))
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        nbclient.NotebookClient(
            notebook, timeout=3600, kernel_name="python3", resources={"metadata": {"path": folder}}
        ).execute()
        seconds = time.perf_counter() - start
    streams = "".join(o.get("text", "") for c in notebook.cells if c.cell_type == "code" for o in c.outputs)
    noisy, denoised = map(float, re.search(r"PSNR: noisy ([\d.]+) dB, denoised ([\d.]+) dB", streams).groups())
    return {"psnr": denoised, "seconds": seconds, "psnr_noisy": noisy, "gain": denoised - noisy}


def measure_distributed():
    """Two CPU processes (gloo) against one, 200 steps on camera: the same PSNR within 0.1 dB."""
    from n2v_estimator import Noise2VoidDenoiser

    clean, noisy = camera_case()
    settings = dict(
        max_epochs=8, steps_per_epoch=25, n_filters=16, random_state=0, verbose=False, device="cpu", precision="32"
    )
    single, distributed = (
        psnr(Noise2VoidDenoiser(**settings, n_devices=n).fit(noisy).transform(noisy), clean) for n in (1, 2)
    )
    return {"single": single, "distributed": distributed}


def _dark_camera(size=192):
    """A crop of camera with 70% of it made a dark background (2 grey levels), as fluorescence images are."""
    from scipy import ndimage
    from skimage import data

    clean = data.camera()[:size, :size].astype(np.float64)
    smooth = ndimage.gaussian_filter(clean, 8)
    weight = ndimage.gaussian_filter((smooth >= np.quantile(smooth, 0.7)).astype(np.float64), 3)
    return 2 + weight * (clean - 2)


_SHORT = dict(max_epochs=16, steps_per_epoch=25, n_filters=8, patch_size=64, random_state=0, verbose=False)


def _calibration_warnings(noisy, **params):
    import warnings

    from n2v_estimator import CalibrationWarning, Noise2VoidDenoiser

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        denoiser = Noise2VoidDenoiser(**{**_SHORT, **params}).fit(noisy)
    said = [str(w.message) for w in caught if issubclass(w.category, CalibrationWarning)]
    return denoiser, said


def measure_calibration_poisson():
    """One Gaussian sigma for Poisson noise on a dark image: the sigma fits the bright part, so in the
    dark it overstates the noise, and fit says so (the blind-spot network's prior, good enough to tell);
    the default for Gaussian noise (the masked U-Net, whose short fit's prior is the worse part) warns too."""
    rng = np.random.default_rng(0)
    clean = _dark_camera()
    noisy = ((rng.poisson(clean / 255 * 20) + rng.normal(0, 1, clean.shape)) * 255 / 20).astype(np.float32)
    denoiser, said = _calibration_warnings(noisy, noise_model="gaussian", blind_spot="network")
    _, said_by_default = _calibration_warnings(noisy, noise_model="gaussian")
    return {
        "warned": any(re.search("the noise model alone predicts .* it overstates the noise", s) for s in said),
        "dark_bin_top": denoiser.calibration_["edges"][0][1],
        "dark_ratio": denoiser.calibration_["ratio"][0][0],
        "default_warned": bool(said_by_default),
    }


def measure_calibration_speckle():
    """Noise that grows with the square of the signal, under a Poisson-Gaussian model: fit says it overstates."""
    from skimage import data

    clean = data.camera()[:192, :192].astype(np.float64)
    rng = np.random.default_rng(0)
    noisy = (clean * rng.gamma(4, 1 / 4, clean.shape) + rng.normal(0, 2, clean.shape)).astype(np.float32)
    _, said = _calibration_warnings(noisy, noise_model="poisson_gaussian", blind_spot="mask", patch_size=32)
    return {"warned": any("overstates the noise" in s for s in said)}


# ---------------------------------------------------------------------- claims
@dataclass(frozen=True)
class Claim:
    """What is measured (``measure_<name>``), and either the README row it is stated in (``row``:
    the table's first cell) or the condition it must meet (``holds``, on the measured dict)."""

    name: str
    minutes: float  # about, on 2 cores with native bfloat16 (both columns for a README row)
    row: str | None = None
    holds: object = None
    says: str = ""
    slower: str | None = None  # a pattern of the README that states how much longer the demo takes: "([\d.]+) times"
    psnr_tolerance: float = 0.05  # dB: a seeded run; the quickstart's unseeded calls get 0.3


CLAIMS = [
    Claim("demo", 6, row="`python examples/denoise_camera.py`"),
    Claim("first_try", 2, row="`Noise2VoidDenoiser(max_epochs=4)`", psnr_tolerance=0.3),
    Claim("defaults", 14, row="`Noise2VoidDenoiser()`", psnr_tolerance=0.3),
    Claim("probabilistic", 60, row='`Noise2VoidDenoiser(noise_model="gaussian")`', psnr_tolerance=0.3),
    Claim("notebook", 2, row="`examples/quickstart.ipynb`"),
    Claim(
        "demo_loaded",
        6,
        slower=r"with two other busy processes on its 2 cores, about ([\d.]+) times as long",
        says="the demo under a load of two busy processes, against the README's quiet time",
    ),
    Claim(
        "distributed",
        2,
        holds=lambda m: m["single"] > 26.5 and abs(m["distributed"] - m["single"]) < 0.1,
        says="2 processes reach the single process's PSNR (above 26.5 dB) within 0.1 dB",
    ),
    Claim(
        "calibration_poisson",
        1,
        holds=lambda m: m["warned"] and m["dark_bin_top"] < 20 and m["dark_ratio"] < 0.5 and m["default_warned"],
        says="fit warns that one sigma overstates the noise of a dark background (ratio below 0.5); the default warns",
    ),
    Claim(
        "calibration_speckle",
        0.5,
        holds=lambda m: m["warned"],
        says="fit warns that a Poisson-Gaussian model overstates speckle noise somewhere",
    ),
]
BY_NAME = {claim.name: claim for claim in CLAIMS}


def readme_table(text=None):
    """The README's table: ``{label: {"steps": int, "bf16": (psnr, seconds), "32": (psnr, seconds)}}``
    and the line under it that names the machine."""
    text = README.read_text() if text is None else text
    section = text.split(TABLE_HEADING, 1)[1]
    rows, machine = {}, None
    for line in section.splitlines()[1:]:
        if line.startswith("| ") and not line.startswith("| ---") and "steps" not in line:
            label, steps, *columns = [cell.strip() for cell in line.strip().strip("|").split("|")]
            rows[label] = {"steps": int(steps), **dict(zip(("bf16", "32"), map(_psnr_and_time, columns)))}
        elif line.startswith("Measured on "):
            machine = line
        elif rows and not line.strip() and machine:
            break
    return rows, machine


def _psnr_and_time(cell):
    """``"27.70 dB, 1.6 min"`` -> ``(27.70, 96.0)``."""
    match = re.fullmatch(r"([\d.]+) dB, ([\d.]+) (s|min)", cell)
    if not match:
        raise ValueError(f"README table cell {cell!r} is not 'PSNR dB, TIME s|min'")
    value, unit = float(match.group(2)), match.group(3)
    return float(match.group(1)), value * (60 if unit == "min" else 1)


def _python(argv, capture=False, native_bf16=True):
    code = "import sys, runpy\n"
    if not native_bf16:
        code += "import n2v_estimator.runtime.compute as c\nc._cpu_has_native_bf16 = lambda: False\n"
    code += f"sys.argv = {argv!r}\nrunpy.run_path(sys.argv[0], run_name='__main__')\n"
    done = subprocess.run([sys.executable, "-c", code], capture_output=capture, text=True, cwd=ROOT)
    if done.returncode:
        raise RuntimeError(f"{argv} failed: {(done.stderr or '')[-2000:]}")
    return done


def _commit():
    """The checkout's commit (with ``+`` when its files differ from it), or ``None`` outside git."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, cwd=ROOT
        )
    except OSError:
        return None
    return head.stdout.strip() + ("+" if dirty.stdout.strip() else "") if head.returncode == 0 else None


def run_measurement(name, native_bf16):
    """``measure_<name>`` in a fresh process, native bfloat16 switched off there unless ``native_bf16``."""
    done = _python([__file__, "--measure", name], capture=True, native_bf16=native_bf16)
    return json.loads(done.stdout.strip().splitlines()[-1])


def judge(claim, measured, stated_rows, kind, same_cpu):
    """``(verdict, note)``: ``"ok"``, ``"MISSED"`` or ``"(time not judged)"`` and what was compared."""
    if claim.holds is not None:
        return ("ok" if claim.holds(measured) else "MISSED"), claim.says
    if claim.slower is not None:  # against the demo's quiet time in the README, for this kind of CPU
        (factor,) = re.findall(claim.slower, " ".join(README.read_text().split()))
        quiet = stated_rows[BY_NAME["demo"].row][kind][1]
        ratio = measured["seconds"] / quiet if quiet else float("inf")
        verdict = "ok" if abs(ratio - float(factor)) <= 0.3 * float(factor) or not same_cpu else "MISSED"
        return verdict, f"{measured['seconds']:.0f} s = {ratio:.2f} x the README's quiet time (README: {factor} x)"
    stated_psnr, stated_seconds = stated_rows[claim.row][kind]
    notes, verdict = [f"PSNR {measured['psnr']:.2f} (README {stated_psnr})"], "ok"
    if abs(measured["psnr"] - stated_psnr) > claim.psnr_tolerance:
        verdict = "MISSED"
    ratio = measured["seconds"] / stated_seconds if stated_seconds else float("inf")
    notes.append(f"{measured['seconds']:.0f} s = {ratio:.2f} x the README's {stated_seconds:.0f} s")
    if ratio > TIME_FACTOR:
        verdict = "MISSED" if same_cpu else verdict
        notes.append("over the README's time" if same_cpu else "another CPU model: time not judged")
    return verdict, "; ".join(notes)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--list", action="store_true", help="list the claims and stop")
    parser.add_argument("--only", nargs="+", choices=list(BY_NAME), help="these claims only")
    parser.add_argument(
        "--bf16",
        choices=["on", "off", "both"],
        default="both",
        help="the README rows' columns to measure: native bfloat16 (this CPU's, if it has it), "
        "emulated float32 CPU, or both",
    )
    parser.add_argument("--check", action="store_true", help="exit status 1 when a measurement misses its claim")
    parser.add_argument(
        "--recorded",
        action="store_true",
        help="judge the latest measurements of --out against the README instead of measuring",
    )
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "claims.jsonl"))
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # a worker: one measurement, printed as JSON
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(globals()[f"measure_{args.measure}"]()))
        return 0
    claims = [BY_NAME[name] for name in args.only] if args.only else CLAIMS
    if args.list:
        for claim in claims:
            print(f"{claim.name:22} ~{claim.minutes:>4} min  {claim.row or claim.says}")
        return 0

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import machine as machines

    machine = machines.describe()
    stated_rows, stated_machine = readme_table()
    same_cpu = stated_machine is not None and machine["cpu"] in stated_machine
    kinds = {"on": ["bf16"], "off": ["32"], "both": ["bf16", "32"]}[args.bf16]
    if not machine["native_bf16"] and "bf16" in kinds:
        print("this CPU has no native bfloat16: the README's bfloat16 column is not measured here")
        kinds = [k for k in kinds if k != "bf16"] or ["32"]
    recorded = {}
    if args.recorded:  # the latest line of each claim and column
        for line in Path(args.out).read_text().splitlines():
            record = json.loads(line)
            recorded[record["claim"], record["column"]] = record
    failed = 0
    for claim in claims:
        for kind in kinds if claim.row else ["bf16" if machine["native_bf16"] else "32"]:
            if args.recorded:
                record = recorded.get((claim.name, kind))
                if record is None:
                    print(f"{claim.name:22} {kind:5} not recorded in {args.out}")
                    failed += 1
                    continue
                measured = record["measured"]
                same_cpu = stated_machine is not None and record["machine"]["cpu"] in stated_machine
            else:
                measured = run_measurement(claim.name, native_bf16=kind == "bf16")
            verdict, note = judge(claim, measured, stated_rows, kind, same_cpu)
            failed += verdict == "MISSED"
            if not args.recorded:
                record = {
                    "claim": claim.name,
                    "column": kind,
                    "measured": measured,
                    "date": time.strftime("%Y-%m-%d"),
                    "commit": _commit(),
                    "machine": machine,
                }
                with open(args.out, "a") as out:
                    out.write(json.dumps(record) + "\n")
            print(f"{claim.name:22} {kind:5} {verdict:7} {note}", flush=True)
    print(f"machine: {machines.line(machine)}")
    return 1 if args.check and failed else 0


if __name__ == "__main__":
    sys.exit(main())

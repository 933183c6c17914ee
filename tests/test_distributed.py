"""Training in several processes (fit/distributed.py): gloo on the CPU, two ranks."""

import dataclasses
import os
import pickle
import signal
import threading

import numpy as np
import pytest
import torch
from sklearn.base import clone

import n2v_estimator.estimator as estimator_module
from n2v_estimator import Noise2VoidDenoiser
from n2v_estimator.fit.distributed import TORCHRUN_VARIABLES, DistributedTrainingError, run_distributed
from n2v_estimator.fit.plan import make_plan

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built in")

PARAMS = dict(
    max_epochs=2,
    steps_per_epoch=3,
    patch_size=32,
    batch_size=16,
    depth=1,
    n_filters=8,
    batch_norm=False,
    random_state=0,
    verbose=False,
    device="cpu",
    precision="32",
    validation_fraction=0,
)


def image(shape=(96, 96)):
    rng = np.random.default_rng(0)
    return (100 + 50 * np.sin(np.indices(shape).sum(0) / 7) + rng.normal(0, 20, shape)).astype(np.float32)


def plan_of(**changes):
    estimator = Noise2VoidDenoiser(**{**PARAMS, **changes})
    return make_plan(estimator.get_params(), image())


class FailingMasker:
    """A masker that fails on rank 1 at its third batch (pickled by reference into the ranks)."""

    def __init__(self, masker):
        self.masker, self.calls = masker, 0

    def __call__(self, x, generator):
        self.calls += 1
        if torch.distributed.is_initialized() and torch.distributed.get_rank() == 1 and self.calls == 3:
            raise RuntimeError("a rank fails")
        return self.masker(x, generator)


class SlowMasker(FailingMasker):
    def __call__(self, x, generator):
        import time

        time.sleep(0.5)
        return self.masker(x, generator)


@pytest.mark.slow
@pytest.mark.parametrize("batch_norm", [False, True])
def test_two_ranks_of_half_a_batch_train_as_one_process_with_the_whole_batch(batch_norm):
    """Step for step: the same patches and blind spots, gradients averaged, batch norm over both ranks."""
    plan = plan_of(batch_norm=batch_norm)
    single, alone = plan.run()
    model, together = run_distributed(plan, 2, same_patches=True)
    np.testing.assert_allclose(
        [h["train_loss"] for h in together.history], [h["train_loss"] for h in alone.history], rtol=1e-5
    )
    for name, tensor in single.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], tensor, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_a_distributed_fit_gives_an_ordinary_fitted_estimator(tmp_path):
    denoiser = Noise2VoidDenoiser(**PARAMS, n_devices=2).fit(image())
    assert len(denoiser.history_) == 2 and np.isfinite(denoiser.transform(image())).all()
    denoiser.save(tmp_path / "model.safetensors")
    loaded = Noise2VoidDenoiser.load(tmp_path / "model.safetensors")
    assert loaded.n_devices == 2
    np.testing.assert_array_equal(loaded.transform(image()), denoiser.transform(image()))
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(denoiser)).transform(image()), denoiser.transform(image()))
    assert clone(denoiser).get_params()["n_devices"] == 2


def fitted():
    denoiser = Noise2VoidDenoiser(**PARAMS).fit(image())
    return denoiser, {k: v.clone() for k, v in denoiser.model_.state_dict().items()}


def assert_unchanged(denoiser, weights):
    assert len(denoiser.history_) == 2
    for name, tensor in denoiser.model_.state_dict().items():
        torch.testing.assert_close(tensor, weights[name], rtol=0, atol=0)


@pytest.mark.slow
def test_a_failing_rank_ends_every_rank_and_leaves_the_estimator_as_it_was(monkeypatch):
    denoiser, weights = fitted()
    real = make_plan
    monkeypatch.setattr(
        estimator_module, "make_plan", lambda *a: dataclasses.replace(real(*a), masker=FailingMasker(real(*a).masker))
    )
    with pytest.raises(DistributedTrainingError, match="rank 1 of 2 failed: RuntimeError: a rank fails"):
        denoiser.set_params(n_devices=2, warm_start=False).fit(image())
    assert_unchanged(denoiser, weights)


@pytest.mark.slow
def test_ctrl_c_ends_every_rank_and_leaves_the_estimator_as_it_was(monkeypatch):
    import multiprocessing

    denoiser, weights = fitted()
    real = make_plan
    monkeypatch.setattr(
        estimator_module, "make_plan", lambda *a: dataclasses.replace(real(*a), masker=SlowMasker(real(*a).masker))
    )
    timer = threading.Timer(6.0, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            denoiser.set_params(n_devices=2, max_epochs=50).fit(image())
    finally:
        timer.cancel()
    assert_unchanged(denoiser, weights)
    assert not [p for p in multiprocessing.active_children() if p.is_alive()]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"batch_size": 15}, "batch_size=15 does not split over n_devices=2"),
        ({"device": "cuda"} if not torch.cuda.is_available() else {"n_devices": 64, "device": "cuda"}, "CUDA"),
    ],
)
def test_settings_that_cannot_be_split_are_refused_before_anything_starts(changes, message):
    with pytest.raises((ValueError, RuntimeError), match=message):
        Noise2VoidDenoiser(**{**PARAMS, "n_devices": 2, **changes}).fit(image())


# ------------------------------------------------------------------ torchrun


def torchrun(*args, cwd, env=None, timeout=240):
    """``torchrun --standalone --nproc-per-node 2 ARGS`` (rendezvous on this machine), gloo on the CPU."""
    import subprocess
    import sys

    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *args]
    return subprocess.run(
        command,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
    )


@pytest.mark.slow
def test_torchrun_ranks_train_as_the_ranks_fit_starts_and_only_rank_0_writes(tmp_path):
    """The documented multi-machine entry point, on one machine: the command line under torchrun
    trains as n_devices=2 does (same rank streams, averaged gradients) and writes one model."""
    np.save(tmp_path / "noisy.npy", image())
    options = [f"--{k.replace('_', '-')}={v}" for k, v in PARAMS.items() if k not in ("verbose", "device")]
    done = torchrun(
        "-m",
        "n2v_estimator.cli",
        "fit",
        "noisy.npy",
        "--model",
        "model.safetensors",
        "--axes",
        "YX",
        "--device",
        "cpu",
        "--n-devices",
        "torchrun",
        *options,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("Saved model.safetensors") == 1, done.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors", "noisy.npy"]
    under_torchrun = Noise2VoidDenoiser.load(tmp_path / "model.safetensors")
    assert under_torchrun.n_devices == "torchrun" and len(under_torchrun.history_) == 2
    spawned = Noise2VoidDenoiser(**PARAMS, n_devices=2).fit(image())
    np.testing.assert_allclose(
        [h["train_loss"] for h in under_torchrun.history_], [h["train_loss"] for h in spawned.history_], rtol=1e-5
    )
    for name, tensor in spawned.model_.state_dict().items():
        torch.testing.assert_close(under_torchrun.model_.state_dict()[name], tensor, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_a_script_under_torchrun_gets_the_same_fitted_estimator_on_every_rank(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(
        "import os, sys, numpy as np\n"
        f"sys.path.insert(0, {os.path.dirname(__file__)!r})\n"
        "from test_distributed import PARAMS, image\n"
        "from n2v_estimator import Noise2VoidDenoiser\n"
        "if __name__ == '__main__':\n"
        "    denoiser = Noise2VoidDenoiser(**PARAMS, n_devices='torchrun').fit(image())\n"
        "    np.save(f\"out{os.environ['RANK']}.npy\", denoiser.transform(image()))\n"
    )
    done = torchrun(str(script), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    np.testing.assert_array_equal(np.load(tmp_path / "out0.npy"), np.load(tmp_path / "out1.npy"))


@pytest.mark.slow
def test_a_failing_rank_under_torchrun_ends_the_job_and_nothing_is_written(tmp_path):
    np.save(tmp_path / "noisy.npy", image())
    # rank 1 cannot read its input (a missing file): it fails, torchrun ends rank 0, nothing is saved
    script = tmp_path / "fit.py"
    script.write_text(
        "import os, sys\n"
        "from n2v_estimator.cli import main\n"
        "if __name__ == '__main__':\n"
        "    source = 'noisy.npy' if os.environ['RANK'] == '0' else 'missing.npy'\n"
        "    sys.exit(main(['fit', source, '--model', 'model.safetensors', '--axes', 'YX', '--device', 'cpu',\n"
        "                   '--max-epochs', '200', '--batch-size', '16', '--patch-size', '32', '--depth', '1',\n"
        "                   '--n-filters', '8', '--n-devices', 'torchrun']))\n"
    )
    done = torchrun(str(script), cwd=tmp_path)
    assert done.returncode != 0 and "missing.npy" in done.stdout + done.stderr
    assert not (tmp_path / "model.safetensors").exists()


def test_torchrun_mode_outside_torchrun_says_how_to_start_it(monkeypatch):
    for name in TORCHRUN_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ValueError, match="torchrun --nproc-per-node N"):
        Noise2VoidDenoiser(**PARAMS, n_devices="torchrun").fit(image())


TORCHRUN_ENVIRONMENT = {
    "RANK": "0",
    "WORLD_SIZE": "2",
    "LOCAL_RANK": "0",
    "MASTER_ADDR": "localhost",
    "MASTER_PORT": "29500",
}


def test_the_command_line_joins_torchrun_only_when_asked(monkeypatch, tmp_path, capsys):
    """torchrun's variables in the environment (a step of a cluster job) do not make a fit join a
    group: it trains on its own, and says so."""
    from n2v_estimator import cli

    for name, value in TORCHRUN_ENVIRONMENT.items():
        monkeypatch.setenv(name, value)
    np.save(tmp_path / "noisy.npy", image())
    options = [f"--{k.replace('_', '-')}={v}" for k, v in PARAMS.items() if k not in ("verbose",)]
    assert (
        cli.main(
            [
                "fit",
                str(tmp_path / "noisy.npy"),
                "--model",
                str(tmp_path / "m.safetensors"),
                "--quiet",
                "--axes",
                "YX",
                *options,
            ]
        )
        == 0
    )
    assert "--n-devices torchrun is not given: this process trains on its own" in capsys.readouterr().err
    assert Noise2VoidDenoiser.load(tmp_path / "m.safetensors").n_devices == 1


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("WORLD_SIZE", "0"),
        ("WORLD_SIZE", "two"),
        ("WORLD_SIZE", "9" * 5000),
        ("RANK", "2"),
        ("RANK", "-1"),
        ("LOCAL_RANK", "1.5"),
        ("MASTER_PORT", "99999"),
        ("MASTER_PORT", ""),
        ("MASTER_ADDR", "host\x1b]0;owned\x07"),
        ("MASTER_ADDR", "a b"),
        ("MASTER_ADDR", "h" * 300),
        ("RANK", None),
    ],
    ids=lambda value: f"{len(value)} characters" if isinstance(value, str) and len(value) > 20 else None,
)
def test_each_bad_torchrun_variable_is_one_line_naming_it_before_any_input_is_read(
    monkeypatch, tmp_path, capsys, name, value
):
    from n2v_estimator import cli
    from n2v_estimator.cli import fit_command

    for key, text in {**TORCHRUN_ENVIRONMENT, name: value}.items():
        if text is None:
            monkeypatch.delenv(key, raising=False)
        else:
            monkeypatch.setenv(key, text)
    monkeypatch.setattr(fit_command, "read_image", lambda *a, **k: pytest.fail("an input was read"))
    np.save(tmp_path / "noisy.npy", image())
    assert (
        cli.main(
            ["fit", str(tmp_path / "noisy.npy"), "--model", str(tmp_path / "m.safetensors"), "--n-devices", "torchrun"]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and name in err and "\x1b" not in err and len(err) < 500, err
    assert not (tmp_path / "m.safetensors").exists()


def rendezvous_in_a_process(tmp_path, environment, seconds=2):
    """The command line's fit with --n-devices torchrun in a process of its own, under ``environment``."""
    import subprocess
    import sys

    np.save(tmp_path / "noisy.npy", image())
    env = {**os.environ, **environment, "N2V_RENDEZVOUS_TIMEOUT": str(seconds), "OMP_NUM_THREADS": "1"}
    options = [f"--{k.replace('_', '-')}={v}" for k, v in PARAMS.items() if k not in ("verbose",)]
    command = [
        sys.executable,
        "-m",
        "n2v_estimator.cli",
        "fit",
        "noisy.npy",
        "--model",
        "m.safetensors",
        "--quiet",
        "--axes",
        "YX",
        "--n-devices",
        "torchrun",
        *options,
    ]
    return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


def free_port():
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("rank", ["0", "1"])
def test_a_rank_whose_peers_never_come_ends_within_the_rendezvous_timeout_in_one_line(tmp_path, rank):
    """Rank 0 waits for a rank 1 that never starts; rank 1 connects to a rank 0 that is not there:
    torch's defaults wait 30 minutes, or retry with native stack traces on every attempt."""
    import time

    start = time.perf_counter()
    done = rendezvous_in_a_process(
        tmp_path, {**TORCHRUN_ENVIRONMENT, "MASTER_ADDR": "127.0.0.1", "RANK": rank, "MASTER_PORT": str(free_port())}
    )
    elapsed = time.perf_counter() - start
    assert done.returncode == 2 and elapsed < 60, (elapsed, done.stderr[-2000:])
    assert done.stderr.strip().splitlines() == [
        line for line in done.stderr.strip().splitlines() if line.startswith("n2v-estimator: ")
    ], done.stderr[-2000:]
    assert (
        "could not join torchrun's group at 127.0.0.1:" in done.stderr
        and f"as RANK {rank} of WORLD_SIZE 2" in (done.stderr)
        and "frame #" not in done.stderr
    )
    assert not (tmp_path / "m.safetensors").exists()


# ------------------------------------------------------------------ the ranks and their parent


def children_of(pid):
    """The process ids whose parent is ``pid`` (Linux's /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry))
    return found


def left(folder):
    """What is in the temporary folder ``folder``, but torch's compile cache (kept by design)."""
    return [path.name for path in folder.iterdir() if not path.name.startswith("torchinductor_")]


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


SCRIPT = (
    "import sys\n"
    f"sys.path.insert(0, {os.path.dirname(__file__)!r})\n"
    "from test_distributed import PARAMS, image\n"
    "from n2v_estimator import Noise2VoidDenoiser\n"
    "{guard}"
    "{indent}Noise2VoidDenoiser(**{{**PARAMS, 'max_epochs': {epochs}, 'batch_size': 2}}, n_devices=2).fit(image({size}))\n"
)


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="finds the ranks through Linux's /proc")
@pytest.mark.parametrize("moment", ["starting", "training"])
def test_the_ranks_and_their_rendezvous_folder_go_when_the_parent_is_killed(tmp_path, moment):
    """kill -9 of the process that called fit(n_devices=2), as its ranks appear or while they
    train: within 5 s no rank, no resource tracker and no temporary folder is left."""
    import subprocess
    import sys
    import time

    script = tmp_path / "train.py"
    script.write_text(
        SCRIPT.format(guard="if __name__ == '__main__':\n", indent="    ", epochs=10_000, size="(96, 96)")
    )
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    env = {**os.environ, "TMPDIR": str(temporary), "OMP_NUM_THREADS": "1"}
    parent = subprocess.Popen(
        [sys.executable, str(script)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 60
        while len(children_of(parent.pid)) < 3 and time.monotonic() < deadline:  # two ranks and the tracker
            time.sleep(0.05)
        if moment == "training":
            time.sleep(8)  # the ranks imported torch, joined and train
        children = children_of(parent.pid)
        assert len(children) >= 3 and (moment == "starting" or left(temporary)), (children, left(temporary))
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 5
        while (any(alive(pid) for pid in children) or left(temporary)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [pid for pid in children if alive(pid)] and not left(temporary)
    finally:
        parent.kill()
        for pid in children_of(parent.pid):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
def test_a_script_without_a_main_guard_fits_and_its_ranks_do_not_run_it_again(tmp_path):
    """Spawn runs the parent's script again in every child: there, a script that fits when imported
    fitted again, multiprocessing refused, the rank died while 2 MB of arguments were written to
    it, and the parent waited forever. The ranks now start without the script."""
    import subprocess
    import sys
    import time

    script = tmp_path / "train.py"
    script.write_text(
        "open('runs.txt', 'a').write('run\\n')\n"
        + SCRIPT.format(guard="", indent="", epochs=2, size="(1024, 1024)")
        + "print('fitted')\n"
    )
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0 and done.stdout.strip() == "fitted", done.stderr[-3000:]
    assert (tmp_path / "runs.txt").read_text() == "run\n" and time.perf_counter() - start < 100


def test_a_process_multiprocessing_starts_that_fits_on_import_is_told_the_fix_in_one_line(monkeypatch):
    """A script of the user's own that starts processes with spawn and fits with n_devices > 1 when
    imported: each child would start its ranks while it starts itself."""
    import multiprocessing

    monkeypatch.setattr(multiprocessing.current_process(), "_inheriting", True, raising=False)
    with pytest.raises(SystemExit, match='if __name__ == "__main__":'):
        Noise2VoidDenoiser(**PARAMS, n_devices=2).fit(image())


def test_a_rank_finds_or_makes_a_private_rendezvous_folder_and_refuses_any_other(tmp_path):
    from n2v_estimator.fit.distributed import private_folder

    folder = tmp_path / "rendezvous"
    assert private_folder(str(folder)) == str(folder) and private_folder(str(folder)) == str(folder)  # made, found
    assert folder.stat().st_mode & 0o777 == 0o700
    os.chmod(folder, 0o755)
    with pytest.raises(RuntimeError, match="not a private folder"):
        private_folder(str(folder))
    (tmp_path / "link").symlink_to(folder)
    with pytest.raises(RuntimeError, match="not a private folder"):
        private_folder(str(tmp_path / "link"))


def _fit_in_a_pool_worker(_):
    try:
        Noise2VoidDenoiser(**PARAMS, n_devices=2).fit(image())
    except ValueError as exc:
        return str(exc)
    return "fitted"


@pytest.mark.slow
def test_a_daemonic_worker_is_told_it_cannot_start_the_ranks():
    """multiprocessing.Pool's workers may not start processes: said up front, with the ways out."""
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(1) as pool:
        (answer,) = pool.map(_fit_in_a_pool_worker, [0])
    assert "daemonic worker process" in answer and "n_devices='torchrun'" in answer, answer

"""BioImage Model Zoo packages read back: only those this package exported, through the model file they carry.

A stranger's zip is judged from its directory and YAML before anything is extracted
(:mod:`n2v_estimator.gateway.zipcheck`), then validated by ``bioimageio.spec``; the denoiser is read from
its attached model file (safetensors and JSON), so nothing in a package is unpickled or run.
"""

from __future__ import annotations

import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TypeVar

from .._typing import PathLike
from ..gateway.errors import ModelFileError
from .zoo_export import CONFIG_KEY, MODEL_FILE, import_bioimageio

if TYPE_CHECKING:
    from types import ModuleType

T = TypeVar("T")


def _copy_bounded(source: IO[bytes], sink: IO[bytes], limit: int, what: str) -> None:
    """Copy ``source`` to ``sink`` in pieces, refusing more than ``limit`` bytes.

    zipfile already stops at a member's declared size; the count keeps the
    bound here, whatever reads the member.
    """
    copied = 0
    while chunk := source.read(2**20):
        copied += len(chunk)
        if copied > limit:
            raise ModelFileError(f"{what} inflates past the {limit} bytes it declares: the zip is damaged or forged.")
        sink.write(chunk)


def _load_description(spec: ModuleType, path: Path) -> Any:
    """``bioimageio.spec``'s description of the package, its failures as :class:`ModelFileError`."""
    try:
        return spec.load_description(str(path), perform_io_checks=True)  # checks every file's sha256
    except ImportError:
        raise
    except Exception as exc:
        raise ModelFileError(
            f"{path} could not be read as a BioImage Model Zoo package by bioimageio.spec "
            f"({type(exc).__name__}: {str(exc)[:300]})."
        ) from exc


def from_package(path: PathLike, load: Callable[[Path], T]) -> T:
    """The denoiser of the package at ``path``: the model file it carries, judged as a stranger's zip and
    validated by ``bioimageio.spec`` first, then read by ``load`` (:meth:`Noise2VoidDenoiser.load`) from
    a temporary copy. The work of :meth:`Noise2VoidDenoiser.from_bioimageio`."""
    from ..gateway.zipcheck import MAX_MODEL_BYTES, check_package

    path = Path(path)
    if not zipfile.is_zipfile(path):
        raise ModelFileError(f"{path} is not a BioImage Model Zoo package (a zip file holding rdf.yaml).")
    # A stranger's zip: bounded, free of YAML that expands or builds objects, naming only its own files,
    # before bioimageio.spec is imported (seconds) and reads it.
    members = set(check_package(path, MODEL_FILE))
    spec, v0_5 = import_bioimageio()
    if "rdf.yaml" not in members and "bioimageio.yaml" not in members:
        raise ModelFileError(f"{path} holds no rdf.yaml: it is not a BioImage Model Zoo package.")
    descr = _load_description(spec, path)
    if not isinstance(descr, v0_5.ModelDescr):
        errors = [e.msg for d in descr.validation_summary.details for e in d.errors] or ["(no details)"]
        raise ModelFileError(
            f"{path} is not a valid BioImage Model Zoo model of spec 0.5 ({type(descr).__name__}): {errors[0][:300]}"
        )
    ours = (descr.config.model_extra or {}).get(CONFIG_KEY) if descr.config is not None else None
    model_file = ours.get("model_file") if isinstance(ours, dict) else None
    attached = {Path(str(getattr(a.source, "path", a.source))).name for a in descr.attachments}
    if model_file is None or model_file not in attached or model_file not in members:
        raise ModelFileError(
            f"{path} was not exported by n2v-estimator (its config has no {CONFIG_KEY!r} entry naming an attached "
            "model file), so it cannot be represented as a Noise2VoidDenoiser; run it with bioimageio.core instead."
        )
    with zipfile.ZipFile(path) as archive, tempfile.TemporaryDirectory(prefix=".n2v-bioimageio-") as work:
        info = archive.getinfo(model_file)
        if info.file_size > MAX_MODEL_BYTES:  # the config may name a member other than MODEL_FILE
            raise ModelFileError(
                f"{path}: the model file {model_file!r} declares {info.file_size} bytes, more than the "
                f"{MAX_MODEL_BYTES} of the largest network n2v-estimator reads."
            )
        target = Path(work) / MODEL_FILE
        with archive.open(info) as source, open(target, "wb") as sink:
            _copy_bounded(source, sink, info.file_size, f"{path}: the model file {model_file!r}")
        return load(target)

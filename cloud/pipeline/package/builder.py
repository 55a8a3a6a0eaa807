"""Build a model package: copy artifacts, hash every file, write the manifest."""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from agent.contract import (
    MANIFEST_FILE,
    DetectionSpec,
    ModelArtifact,
    PackageManifest,
    PreprocessSpec,
    describe_file,
    sha256_bytes,
    utc_now,
)


@dataclass(frozen=True)
class BuiltPackage:
    manifest: PackageManifest
    directory: Path
    manifest_sha256: str
    size_bytes: int


def build_package(
    *,
    packages_dir: Path,
    model_name: str,
    model_version: str,
    labels: list[str],
    spec: PreprocessSpec,
    artifacts: list[tuple[Path, ModelArtifact]],
    hardware_profiles: list[str],
    extra_files: list[Path] | None = None,
    drift_reference: Path | None = None,
    detection: DetectionSpec | None = None,
    release: int = 0,
) -> BuiltPackage:
    """Write ``packages_dir/<package_id>/`` with the artifacts and ``manifest.json``, once.

    The package id includes a hash of the artifact bytes and of everything the manifest
    says about them, so rebuilding the same model the same way gives the same id and
    anything different never collides. A package directory is never rewritten: devices
    and the TUF repository pin its manifest hash, so a rebuild of an existing package
    returns the package as it is on disk (and refuses when those files differ from the
    inputs). ``extra_files`` (golden vectors, OpenVINO weights next to their .xml) are
    copied under their own names and listed in the manifest, so its hash covers them too.
    ``detection`` makes it a detection package (the manifest's task and decoder block).
    ``release`` is the manifest's place in its model line (the model version's registry id,
    which only grows): devices refuse a lower release than they installed unless rolled back.

    Raises:
        ValueError: a directory for this package id exists with different files.
    """
    extras = list(extra_files or [])
    # The drift reference travels like any extra file, and the manifest names it.
    if drift_reference is not None:
        extras.append(drift_reference)
    sources = [*(p for p, _ in artifacts), *extras]
    names = [*(artifact.file for _, artifact in artifacts), *(p.name for p in extras)]
    described = {name: describe_file(path) for name, path in zip(names, sources, strict=True)}
    # Everything in the manifest but its id, its timestamp and the file list (hashed above).
    identity = json.dumps({
        "model_name": model_name, "model_version": model_version, "labels": labels,
        "hardware_profiles": hardware_profiles, "preprocessing": spec.model_dump(mode="json"),
        "artifacts": [artifact.model_dump(mode="json") for _, artifact in artifacts],
        "drift_reference": drift_reference.name if drift_reference is not None else None,
        "detection": detection.model_dump(mode="json") if detection is not None else None,
        "release": release,
    }, sort_keys=True).encode()
    content_hash = sha256_bytes(b"".join(described[name].sha256.encode() for name in names) + identity)[:10]
    package_id = f"{model_version}-{content_hash}"
    directory = packages_dir / package_id
    if (directory / MANIFEST_FILE).exists():
        return _existing(directory, {name: d.sha256 for name, d in described.items()})
    packages_dir.mkdir(parents=True, exist_ok=True)
    # Written beside, then renamed into place: a crash never leaves a half-written package.
    staging = Path(tempfile.mkdtemp(prefix=f".building-{package_id}-", dir=packages_dir))
    try:
        files = []
        for name, source in zip(names, sources, strict=True):
            shutil.copyfile(source, staging / name)
            files.append(describe_file(staging / name))
        manifest = PackageManifest(
            package_id=package_id,
            model_name=model_name,
            model_version=model_version,
            created_at=utc_now(),
            hardware_profiles=hardware_profiles,
            labels=labels,
            preprocessing=spec,
            artifacts=[artifact for _, artifact in artifacts],
            files=files,
            drift_reference_file=drift_reference.name if drift_reference is not None else None,
            task="detection" if detection is not None else "classification",
            detection=detection,
            release=release,
        )
        raw = manifest.to_bytes()
        (staging / MANIFEST_FILE).write_bytes(raw)
        if directory.exists():
            # A directory without a manifest is what an interrupted older build left behind.
            shutil.rmtree(directory)
        try:
            staging.rename(directory)
        except OSError:
            # Another build of the same package won the race: theirs stands.
            if (directory / MANIFEST_FILE).exists():
                return _existing(directory, {name: d.sha256 for name, d in described.items()})
            raise
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return BuiltPackage(manifest=manifest, directory=directory, manifest_sha256=sha256_bytes(raw),
                        size_bytes=sum(f.size_bytes for f in files) + len(raw))


def _existing(directory: Path, expected_sha256: dict[str, str]) -> BuiltPackage:
    """The package already on disk, left untouched, if it holds exactly the expected files."""
    raw = (directory / MANIFEST_FILE).read_bytes()
    manifest = PackageManifest.from_bytes(raw)
    listed = {f.name: f.sha256 for f in manifest.files}
    if listed != expected_sha256:
        raise ValueError(f"package directory {directory} already exists with different files; packages are never "
                         "rewritten (devices pin their manifest hash): remove it only if no device or deployment "
                         "uses it")
    return BuiltPackage(manifest=manifest, directory=directory, manifest_sha256=sha256_bytes(raw),
                        size_bytes=sum(f.size_bytes for f in manifest.files) + len(raw))

"""Build a model package: copy artifacts, hash every file, write the manifest."""

from __future__ import annotations

import shutil
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
    """Write ``packages_dir/<package_id>/`` with the artifacts and ``manifest.json``.

    The package id includes a hash of the artifact bytes, so rebuilding the same
    model gives the same id and a different model never collides. ``extra_files``
    (golden vectors, OpenVINO weights next to their .xml) are copied under their
    own names and listed in the manifest, so its hash covers them too.
    ``detection`` makes it a detection package (the manifest's task and decoder block).
    ``release`` is the manifest's place in its model line (the model version's registry id,
    which only grows): devices refuse a lower release than they installed unless rolled back.
    """
    extras = list(extra_files or [])
    # The drift reference travels like any extra file, and the manifest names it.
    if drift_reference is not None:
        extras.append(drift_reference)
    content_hash = sha256_bytes(b"".join(describe_file(p).sha256.encode()
                                         for p in [*(p for p, _ in artifacts), *extras]))[:10]
    package_id = f"{model_version}-{content_hash}"
    directory = packages_dir / package_id
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    files = []
    for source, artifact in artifacts:
        shutil.copyfile(source, directory / artifact.file)
        files.append(describe_file(directory / artifact.file))
    for source in extras:
        shutil.copyfile(source, directory / source.name)
        files.append(describe_file(directory / source.name))
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
    (directory / MANIFEST_FILE).write_bytes(raw)
    return BuiltPackage(manifest=manifest, directory=directory, manifest_sha256=sha256_bytes(raw),
                        size_bytes=sum(f.size_bytes for f in files) + len(raw))

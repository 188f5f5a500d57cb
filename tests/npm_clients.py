"""The trackers of others as their users get them: npm packages installed at test set-up.

They are fetched from the npm registry into the git-ignored .cache/npm-clients/, never
copied into the repository, and installed once: a later run finds them there and runs no
npm at all, unless the versions asked for below have changed. Test modules load the
fixture with `pytest_plugins = ("tests.npm_clients",)`.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from tests.conftest import ROOT

# The current releases' lines (npm view, 2026-12): a caret on 0.x keeps the minor version.
PACKAGES = {
    "@plausible-analytics/tracker": "^0.4.6",
    "@umami/node": "^0.4.0",
}
INSTALL_DIRECTORY = ROOT / ".cache" / "npm-clients"
INSTALL_TIMEOUT_SECONDS = 300


@dataclasses.dataclass(frozen=True)
class NpmClients:
    directory: Path
    versions: dict[str, str]  # package: the version installed

    @property
    def node_modules(self) -> Path:
        return self.directory / "node_modules"

    def file(self, package: str, relative: str) -> Path:
        path = self.node_modules / package / relative
        assert path.is_file(), f"{package} {self.versions[package]} has no {relative}"
        return path


@pytest.fixture(scope="session")
def npm_clients() -> NpmClients:
    return install(INSTALL_DIRECTORY)


def install(directory: Path) -> NpmClients:
    """The packages of PACKAGES in directory/node_modules, installed unless they already
    are; a test run beside another waits for the other's install (a file lock)."""
    directory.mkdir(parents=True, exist_ok=True)
    manifest = json.dumps({"private": True, "dependencies": PACKAGES}, indent=2) + "\n"
    with open(directory / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        # Written after a whole install only: a failed one is tried again next time.
        stamp = directory / ".installed"
        if not (stamp.is_file() and stamp.read_text() == manifest):
            stamp.unlink(missing_ok=True)
            (directory / "package.json").write_text(manifest)
            _npm_install(directory)
            stamp.write_text(manifest)
        installed = _installed_versions(directory)
    missing = PACKAGES.keys() - installed.keys()
    if missing:
        pytest.fail(f"{sorted(missing)} missing from {directory}/node_modules", pytrace=False)
    return NpmClients(directory, installed)


def _installed_versions(directory: Path) -> dict[str, str]:
    versions = {}
    for package in PACKAGES:
        metadata = directory / "node_modules" / package / "package.json"
        if metadata.is_file():
            versions[package] = json.loads(metadata.read_text())["version"]
    return versions


def _npm_install(directory: Path) -> None:
    npm = shutil.which("npm")
    if npm is None:
        pytest.fail(
            "npm is not installed: the compatibility tests need node and npm", pytrace=False
        )
    try:
        result = subprocess.run(
            [npm, "install", "--no-audit", "--no-fund", "--no-progress"],
            cwd=directory,
            capture_output=True,
            text=True,
            timeout=INSTALL_TIMEOUT_SECONDS,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(
            f"npm install took over {INSTALL_TIMEOUT_SECONDS} s in {directory}:\n{exc}",
            pytrace=False,
        )
    if result.returncode != 0:
        pytest.fail(
            f"npm install failed with {result.returncode} in {directory}:\n"
            f"{result.stdout}{result.stderr}",
            pytrace=False,
        )


# Packages whose one file a test needs, not their dependencies: fetched as the tarball
# the registry serves (npm pack), never installed. umami is Umami's whole application;
# its tracker is src/tracker/index.js (the npm registry's latest release, 2.10.0).
PACKED = {"umami": "2.10.0"}


def packed_file(package: str, relative: str) -> Path:
    """`relative` inside the PACKED release of `package`, fetched once into the cache."""
    version = PACKED[package]
    directory = INSTALL_DIRECTORY / "packed" / f"{package}-{version}"
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (directory / ".unpacked").is_file():
            npm = shutil.which("npm")
            if npm is None:
                pytest.fail("npm is not installed: the compatibility tests need it", pytrace=False)
            result = subprocess.run(
                [npm, "pack", f"{package}@{version}", "--silent"],
                cwd=directory, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_SECONDS,
            )  # fmt: skip
            if result.returncode != 0:
                pytest.fail(f"npm pack {package}@{version} failed:\n{result.stderr}", pytrace=False)
            with tarfile.open(directory / result.stdout.strip().splitlines()[-1]) as archive:
                archive.extractall(directory, filter="data")
            (directory / ".unpacked").write_text(version)
    path = directory / "package" / relative
    assert path.is_file(), f"{package} {version} has no {relative}"
    return path


@pytest.fixture(scope="session")
def umami_tracker() -> bytes:
    """Umami's tracker as its source is published (npm: umami, src/tracker/index.js)."""
    return packed_file("umami", "src/tracker/index.js").read_bytes()

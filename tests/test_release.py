"""Release metadata: the project URLs, the changelog's section for this version, the version policy."""

import re
from importlib import metadata
from pathlib import Path

import arrayloss

ROOT = Path(__file__).resolve().parents[1]
REPOSITORY = "https://github.com/arrayloss/arrayloss"


def test_metadata_has_the_project_urls():
    entries = metadata.metadata("arrayloss").get_all("Project-URL") or []
    urls = dict(entry.split(", ", 1) for entry in entries)
    assert urls == {
        "Homepage": REPOSITORY,
        "Documentation": "https://arrayloss.readthedocs.io",
        "Changelog": f"{REPOSITORY}/blob/main/CHANGELOG.md",
        "Issues": f"{REPOSITORY}/issues",
    }


def test_installed_metadata_is_this_version():
    assert metadata.version("arrayloss") == arrayloss.__version__


def test_changelog_has_a_section_for_the_current_version():
    changelog = (ROOT / "CHANGELOG.md").read_text()
    headings = re.findall(r"^## \[([^\]]+)\]", changelog, flags=re.MULTILINE)
    assert headings[0] == "Unreleased"  # Keep a Changelog: changes not yet released come first
    assert arrayloss.__version__ in headings


def test_readme_links_the_changelog_and_the_version_policy():
    readme = (ROOT / "README.md").read_text()
    for target in ("CHANGELOG.md", "docs/versioning.md"):
        assert f"]({target})" in readme and (ROOT / target).is_file()
    policy = (ROOT / "docs" / "versioning.md").read_text()
    assert "breaking change" in policy and "DeprecationWarning" in policy


def test_read_the_docs_builds_as_the_docs_session_does():
    """The published site: docs/conf.py, warnings as errors, and the pinned tools that `nox -s docs` uses."""
    config = (ROOT / ".readthedocs.yaml").read_text()
    settings = ("configuration: docs/conf.py", "fail_on_warning: true", "requirements: docs/requirements.txt")
    for setting in settings:
        assert setting in config
    pins = (ROOT / "docs" / "requirements.txt").read_text().split()
    assert {pin.split("==")[0] for pin in pins if "==" in pin} >= {"sphinx", "myst-parser", "numpydoc"}
    assert '"docs/requirements.txt"' in (ROOT / "noxfile.py").read_text()

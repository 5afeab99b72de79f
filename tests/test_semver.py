"""Semantic versions and ranges used by specs (and by the orchestrator's registry)."""

from __future__ import annotations

import pytest
from dagengine._semver import Version, VersionRange


def test_precedence_follows_semver() -> None:
    # The example ordering from semver.org, plus numeric (not lexical) comparison.
    ordered = [
        "1.0.0-alpha",
        "1.0.0-alpha.1",
        "1.0.0-alpha.beta",
        "1.0.0-beta",
        "1.0.0-beta.2",
        "1.0.0-beta.11",
        "1.0.0-rc.1",
        "1.0.0",
        "1.9.0",
        "1.10.0",
        "2.0.0",
    ]
    versions = [Version.parse(v) for v in ordered]
    assert sorted(reversed(versions)) == versions
    assert Version.parse("1.0.0+build.1") == Version.parse("1.0.0+other")
    assert str(Version.parse("1.2.3-rc.1+b.5")) == "1.2.3-rc.1+b.5"


@pytest.mark.parametrize("text", ["1.2", "v1.2.3", "1.2.3.4", "01.2.3", "1.2.3-", "", "1.2.3-01"])
def test_invalid_versions(text: str) -> None:
    with pytest.raises(ValueError, match="invalid version"):
        Version.parse(text)


@pytest.mark.parametrize(
    ("spec", "yes", "no"),
    [
        ("*", ["0.0.1", "1.2.3", "9.9.9"], ["1.0.0-rc.1"]),
        ("^1.4", ["1.4.0", "1.4.7", "1.10.0"], ["1.3.9", "2.0.0", "2.0.0-rc.1", "1.5.0-beta"]),
        ("^0.2.3", ["0.2.3", "0.2.9"], ["0.3.0", "0.2.2"]),
        ("^0.0.3", ["0.0.3"], ["0.0.4"]),
        ("~1.4.2", ["1.4.2", "1.4.9"], ["1.5.0", "1.4.1"]),
        ("~1", ["1.0.0", "1.9.9"], ["2.0.0"]),
        (">=1.2,<2", ["1.2.0", "1.99.0"], ["1.1.9", "2.0.0"]),
        (">=1.2 <2", ["1.5.0"], ["2.0.0"]),
        ("1.2.3", ["1.2.3"], ["1.2.4"]),
        ("1.2", ["1.2.0", "1.2.8"], ["1.3.0"]),
        ("1.x", ["1.0.0", "1.7.1"], ["2.0.0"]),
        (">1.2", ["1.3.0"], ["1.2.9"]),
        ("<=1.2", ["1.2.9"], ["1.3.0"]),
        ("^1.0.0-beta", ["1.0.0-beta.2", "1.0.0", "1.5.0"], ["1.0.0-alpha", "1.1.0-beta"]),
        ("^1 || ^3", ["1.1.0", "3.0.0"], ["2.0.0"]),
    ],
)
def test_range_matching(spec: str, yes: list[str], no: list[str]) -> None:
    rng = VersionRange.parse(spec)
    for version in yes:
        assert rng.matches(version), (spec, version)
    for version in no:
        assert not rng.matches(version), (spec, version)


@pytest.mark.parametrize("text", ["", "^", ">=1.2,<<2", "^one", "1.2.3.4", "a || b", "||"])
def test_invalid_ranges(text: str) -> None:
    with pytest.raises(ValueError, match="invalid version range"):
        VersionRange.parse(text)


@pytest.mark.parametrize("text", ["1.\u0661.0", "\u0661.0.0", "1.0.0-\u0661", "1.1\u0661.0"])
def test_only_ascii_digits(text: str) -> None:
    # Python's \d matches any Unicode digit, and int() would then read "1.\u0661.0" as 1.1.0.
    with pytest.raises(ValueError, match="invalid version"):
        Version.parse(text)
    with pytest.raises(ValueError, match="invalid version range"):
        VersionRange.parse(text)


@pytest.mark.parametrize(
    ("spec", "yes", "no"),
    [
        # A partial '>' bound is a release: no pre-release of the next minor slips in.
        (">1.2", ["1.3.0", "2.0.0"], ["1.3.0-alpha", "1.3.0-0", "1.2.9"]),
        (">1", ["2.0.0"], ["2.0.0-rc.1", "1.9.9"]),
        # A partial '<' bound excludes every pre-release of that version (npm's '<2.0.0-0').
        (">=2.0.0-alpha <2", [], ["2.0.0-beta", "2.0.0-alpha", "2.0.0", "1.5.0"]),
        ("<2", ["1.99.0"], ["2.0.0-rc.1", "2.0.0"]),
        # Hyphen ranges are inclusive; a partial upper end covers its whole line.
        ("1.2.3 - 2.3.4", ["1.2.3", "2.3.4", "2.0.0"], ["1.2.2", "2.3.5"]),
        ("1.2 - 1.4", ["1.2.0", "1.4.9"], ["1.1.9", "1.5.0"]),
        ("1.0.0 - 1.0.0 || ^3", ["1.0.0", "3.1.0"], ["1.0.1"]),
    ],
)
def test_range_bounds_follow_npm(spec: str, yes: list[str], no: list[str]) -> None:
    rng = VersionRange.parse(spec)
    for version in yes:
        assert rng.matches(version), (spec, version)
    for version in no:
        assert not rng.matches(version), (spec, version)


def test_best_and_is_prerelease() -> None:
    versions = [Version.parse(v) for v in ["1.9.0", "1.10.0", "2.0.0-rc.1", "0.9.0"]]
    assert VersionRange.parse("^1").best(versions) == Version.parse("1.10.0")
    assert VersionRange.parse("^2.0.0-rc.0").best(versions) == Version.parse("2.0.0-rc.1")
    assert VersionRange.parse("^3").best(versions) is None
    assert Version.parse("2.0.0-rc.1").is_prerelease
    assert not Version.parse("2.0.0+build").is_prerelease

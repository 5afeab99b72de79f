"""Semantic versions and ranges used by specs (and by the orchestrator's registry)."""

from __future__ import annotations

from typing import Any

import pytest
from dagengine._semver import Version, VersionRange
from hypothesis import given, settings
from hypothesis import strategies as st


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


# -- the grammar, checked against the `semver` package (an independent implementation) -------

semver = pytest.importorskip("semver")


def _ours(text: str) -> Version | None:
    try:
        return Version.parse(text)
    except ValueError:
        return None


def _theirs(text: str) -> Any:
    try:
        return semver.Version.parse(text)
    except ValueError:
        return None


@pytest.mark.parametrize(
    "text",
    [" 1.2.3", "1.2.3 ", "1.2.3\n", "\t1.2.3", "1.2.3\r\n", "\n1.2.3", "1.2.3\u00a0", "1.2.3\x0b"],
)
def test_surrounding_whitespace_is_refused(text: str) -> None:
    # semver.org's grammar has no whitespace; Python's `$` would also match before a final "\n".
    with pytest.raises(ValueError, match="invalid version"):
        Version.parse(text)
    assert _theirs(text) is None


@pytest.mark.parametrize(
    ("text", "valid"),
    [
        ("0.0.0", True),
        ("1.0.0-0", True),
        ("1.0.0-0a.00a.-", True),  # alphanumeric identifiers may start with zeros
        ("1.0.0-alpha.01", False),  # a numeric one may not
        ("1.0.0-00", False),
        ("1.0.0+001.0a", True),  # build identifiers may
        ("1.0.0-", False),
        ("1.0.0+", False),
        ("1.0.0-a..b", False),
        ("1.0.0+a..b", False),
        ("1.0.0-a.", False),
        ("1.0.0-+b", False),
        ("1.0.0-a+b+c", False),
        ("1.0.0-a_b", False),
        ("1.0.0-é", False),
        ("00.1.0", False),
        ("1.00.0", False),
        ("1.0.00", False),
        ("1.0", False),
        ("v1.0.0", False),
        ("=1.0.0", False),
        ("1." + "9" * 250 + ".0", True),
        ("1.0.0-" + "a" * 250, False),  # over 255 characters (as the semver package)
    ],
)
def test_grammar_edges_agree_with_the_semver_package(text: str, valid: bool) -> None:
    assert (_ours(text) is not None) is valid, text
    assert (_theirs(text) is not None) is valid, text


_NUMS = ["0", "1", "2", "9", "10", "01", "00", "123", "", "x", "\u0661", "-1"]
_IDS = ["alpha", "beta", "rc", "0", "1", "2", "11", "01", "00", "0a", "a0", "-", "x-y", "a_b"]
_IDS += ["é", "A", "Z9", "1" * 24]
_PADS = ["", "", "", " ", "\n", "\t", "\r\n", "v", "=", "\u00a0", "+", "-", "."]
_PIECES = {
    "num": st.sampled_from(_NUMS),
    "id": st.sampled_from([*_IDS, ""]),
    "pad": st.sampled_from(_PADS),
}


@st.composite
def _valid_versions(draw: st.DrawFn) -> str:
    # Few distinct values, so that pairs often share a prefix and meet every comparison rule.
    nums = st.sampled_from(["0", "1", "2", "10"])
    ids = st.sampled_from(["alpha", "beta", "0", "1", "2", "11", "0a", "a0", "-", "A", "a-b"])
    text = ".".join(draw(st.lists(nums, min_size=3, max_size=3)))
    if draw(st.booleans()):
        text += "-" + ".".join(draw(st.lists(ids, min_size=1, max_size=3)))
    if draw(st.booleans()):
        text += "+" + ".".join(draw(st.lists(ids | st.just("001"), min_size=1, max_size=2)))
    return text


@st.composite
def _near_versions(draw: st.DrawFn) -> str:
    # Half are valid versions (then padded), half are pieced together from near-valid parts.
    if draw(st.booleans()):
        text = draw(_valid_versions())
    else:
        nums = draw(st.lists(_PIECES["num"], min_size=1, max_size=4))
        text = ".".join(nums)
        if draw(st.booleans()):
            text += "-" + ".".join(draw(st.lists(_PIECES["id"], min_size=0, max_size=4)))
        if draw(st.booleans()):
            text += "+" + ".".join(draw(st.lists(_PIECES["id"], min_size=0, max_size=3)))
    return draw(_PIECES["pad"]) + text + draw(_PIECES["pad"])


_version_texts = st.one_of(
    _near_versions(),
    st.text(alphabet="0123456789.-+abxAZ \n\t_", max_size=24),
)


@settings(max_examples=600, deadline=None)
@given(_version_texts)
def test_accepts_and_refuses_what_the_semver_package_does(text: str) -> None:
    ours, theirs = _ours(text), _theirs(text)
    assert (ours is None) == (theirs is None), (text, ours, theirs)
    if ours is not None:
        assert (ours.major, ours.minor, ours.patch) == (theirs.major, theirs.minor, theirs.patch)
        assert ".".join(ours.prerelease) == (theirs.prerelease or "")
        assert ours.build == (theirs.build or "")
        assert str(ours) == str(theirs) == text


def _sign(value: int) -> int:
    return (value > 0) - (value < 0)


@settings(max_examples=600, deadline=None)
@given(_valid_versions(), _valid_versions())
def test_orders_versions_as_the_semver_package_does(a: str, b: str) -> None:
    ours_a, ours_b = Version.parse(a), Version.parse(b)
    expected = _sign(semver.Version.parse(a).compare(semver.Version.parse(b)))
    got = (ours_a > ours_b) - (ours_a < ours_b)
    assert got == expected, (a, b)
    assert (ours_a == ours_b) == (expected == 0)
    if expected == 0:
        assert hash(ours_a) == hash(ours_b)  # build metadata is ignored, also by the hash


@pytest.mark.parametrize(
    "text",
    [" ^1.2", "^1.2 ", "^1.2\n", "\t~1.2.3", ">=1.2\t<2", "^1 ||\n^2", "1.2.3\u00a0", "^1.2\r\n"],
)
def test_ranges_refuse_surrounding_and_odd_whitespace(text: str) -> None:
    with pytest.raises(ValueError, match="invalid version range"):
        VersionRange.parse(text)


@pytest.mark.parametrize(
    ("text", "yes", "no"),
    [
        (">=1.2  <2", "1.2.0", "2.0.0"),
        (">= 1.2, <2", "1.2.0", "1.1.0"),
        ("^1  ||  ^3", "3.1.0", "2.0.0"),
        ("1.2  -  1.4", "1.4.9", "1.5.0"),
    ],
)
def test_ranges_allow_spaces_between_comparators(text: str, yes: str, no: str) -> None:
    rng = VersionRange.parse(text)
    assert rng.text == text
    assert rng.matches(yes)
    assert not rng.matches(no)

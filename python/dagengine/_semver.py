"""Semantic versions (semver.org 2.0) and npm-style version ranges.

Used to validate ``version:`` and ``workflow: child@range`` in specs; the orchestrator's
registry resolves sub-workflow references with :meth:`VersionRange.matches`.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

__all__ = ["MAX_LENGTH", "Version", "VersionRange"]

# Digits are ASCII only: Python's default (Unicode) ``\d`` and int() would read
# "1.\u0661.0" (an Arabic-Indic one) as 1.1.0.
_NUM = r"0|[1-9][0-9]*"
_PRE_ID = r"(?:0|[1-9][0-9]*|[0-9]*[A-Za-z-][0-9A-Za-z-]*)"
_VERSION = re.compile(
    rf"(?P<major>{_NUM})\.(?P<minor>{_NUM})\.(?P<patch>{_NUM})"
    rf"(?:-(?P<pre>{_PRE_ID}(?:\.{_PRE_ID})*))?"
    r"(?:\+(?P<build>[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?",
    re.ASCII,
)
# A version in a range may be partial ("1", "1.4") or use x/* wildcards ("1.x").
_PARTIAL = re.compile(
    rf"(?P<major>{_NUM}|[xX*])(?:\.(?P<minor>{_NUM}|[xX*])(?:\.(?P<patch>{_NUM}|[xX*])"
    rf"(?:-(?P<pre>{_PRE_ID}(?:\.{_PRE_ID})*))?)?)?",
    re.ASCII,
)
_COMPARATOR = re.compile(r"(?P<op>\^|~|>=|<=|>|<|=)?(?P<ver>[^ ,]+)")
# npm's hyphen range "1.2.3 - 2.3.4" (spaces around the hyphen are required).
_HYPHEN = re.compile(r"(?P<low>[^ ,]+) +- +(?P<high>[^ ,]+)")
#: Longest version text accepted (as the ``semver`` package and npm do): longer is refused,
#: which also keeps int() off thousands of digits.
MAX_LENGTH = 255


@functools.total_ordering
@dataclass(frozen=True, slots=True)
class Version:
    """A semantic version; ordering follows semver precedence (build metadata ignored)."""

    major: int
    minor: int
    patch: int
    prerelease: tuple[str, ...] = ()
    build: str = ""
    #: The precedence key (:meth:`_sort_key`), computed once: a version is hashed and
    #: compared on every run's start (the registry's latest, the store's index).
    _key: tuple[int, int, int, int, tuple[tuple[int, int, str], ...]] = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "_key", self._sort_key())

    @classmethod
    def parse(cls, text: str) -> Version:
        """Parse ``MAJOR.MINOR.PATCH[-pre][+build]``; ``ValueError`` naming the text if not.

        The whole text must be the version (semver.org's grammar): surrounding whitespace, a
        ``v`` prefix, leading zeros in numeric identifiers and empty identifiers are refused.
        """
        if isinstance(text, str) and len(text) > MAX_LENGTH:
            raise ValueError(
                f"invalid version {text[:40]!r}...: longer than {MAX_LENGTH} characters"
            )
        match = _VERSION.fullmatch(text) if isinstance(text, str) else None
        if match is None:
            raise ValueError(
                f"invalid version {text!r}: expected semver MAJOR.MINOR.PATCH[-pre][+build], "
                "e.g. '1.2.0'"
            )
        pre = match.group("pre")
        return cls(
            int(match.group("major")),
            int(match.group("minor")),
            int(match.group("patch")),
            tuple(pre.split(".")) if pre else (),
            match.group("build") or "",
        )

    @property
    def is_prerelease(self) -> bool:
        """True for versions like ``1.0.0-rc.1``."""
        return bool(self.prerelease)

    def _sort_key(self) -> tuple[int, int, int, int, tuple[tuple[int, int, str], ...]]:
        # A release sorts after its pre-releases; numeric identifiers sort before alphanumeric
        # ones and compare by value (by length, then digits: they have no leading zeros);
        # alphanumeric ones compare in ASCII order; a longer list wins when all else is equal.
        pre = tuple((0, len(p), p) if p.isdigit() else (1, 0, p) for p in self.prerelease)
        return (self.major, self.minor, self.patch, 0 if self.prerelease else 1, pre)

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        return self._key < other._key

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        return self._key == other._key

    def __hash__(self) -> int:
        return hash(self._key)

    def __str__(self) -> str:
        text = f"{self.major}.{self.minor}.{self.patch}"
        if self.prerelease:
            text += "-" + ".".join(self.prerelease)
        if self.build:
            text += "+" + self.build
        return text


# A comparator is (op, version) with op in <, <=, >, >=, =.
_Comparator = tuple[str, Version]


@dataclass(frozen=True, slots=True)
class VersionRange:
    """An npm-style range: ``*``, ``1.2.3``, ``1.4`` (= 1.4.x), ``^1.4``, ``~1.4.2``,
    ``>=1.2,<2`` (comma or space means AND), ``1.2 - 1.4`` (inclusive hyphen range),
    ``^1 || ^2`` (OR). ``text`` keeps the original.

    Comparators are separated by spaces (ASCII ``' '``, any number) or a comma; the text may
    not begin or end with whitespace, nor hold tabs, newlines or other whitespace.

    As in npm, a pre-release version only matches a comparator set that names a pre-release
    of the same ``major.minor.patch``.
    """

    text: str
    alternatives: tuple[tuple[_Comparator, ...], ...]

    @classmethod
    def parse(cls, text: str) -> VersionRange:
        """Parse a range; ``ValueError`` naming the range and the bad part if invalid."""
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"invalid version range {text!r}: empty")
        if text != text.strip():
            raise ValueError(f"invalid version range {text!r}: leading or trailing whitespace")
        if len(text) > 4 * MAX_LENGTH:
            raise ValueError(
                f"invalid version range {text[:40]!r}...: longer than {4 * MAX_LENGTH} characters"
            )
        odd = re.search(r"[^ \S]", text)
        if odd is not None:
            raise ValueError(
                f"invalid version range {text!r}: {odd.group()!r} (comparators are separated "
                "by spaces or commas)"
            )
        alternatives = []
        for alt in text.split("||"):
            hyphen = _HYPHEN.fullmatch(alt.strip(" "))
            if hyphen is not None:
                alternatives.append(_parse_hyphen(hyphen["low"], hyphen["high"], text))
                continue
            parts = [p for p in re.split(r"[, ]+", alt.strip(" ")) if p]
            # Join "op version" written with a space (">= 1.2") back into one comparator.
            joined: list[str] = []
            for part in parts:
                if joined and joined[-1] in ("^", "~", ">=", "<=", ">", "<", "="):
                    joined[-1] += part
                else:
                    joined.append(part)
            if not joined:
                raise ValueError(f"invalid version range {text!r}: empty alternative")
            comparators: list[_Comparator] = []
            for part in joined:
                comparators.extend(_parse_comparator(part, text))
            alternatives.append(tuple(comparators))
        return cls(text, tuple(alternatives))

    def matches(self, version: Version | str) -> bool:
        """True if ``version`` satisfies the range."""
        ver = Version.parse(version) if isinstance(version, str) else version
        return any(_satisfies(ver, comps) for comps in self.alternatives)

    def best(self, versions: Iterable[Version]) -> Version | None:
        """The highest of ``versions`` that satisfies the range, or ``None``."""
        return max((v for v in versions if self.matches(v)), default=None)

    def __str__(self) -> str:
        return self.text


def _parse_hyphen(low_text: str, high_text: str, whole: str) -> tuple[_Comparator, ...]:
    # "A - B" is ">=A <=B", where a partial B means "below the next version past B"
    # (1.2 - 1.4 is >=1.2.0 <1.5.0-0), exactly what ">=A" and "<=B" already mean here.
    return (*_parse_comparator(">=" + low_text, whole), *_parse_comparator("<=" + high_text, whole))


def _satisfies(ver: Version, comps: tuple[_Comparator, ...]) -> bool:
    for op, bound in comps:
        if op == "<" and not ver < bound:
            return False
        if op == "<=" and not ver <= bound:
            return False
        if op == ">" and not ver > bound:
            return False
        if op == ">=" and not ver >= bound:
            return False
        if op == "=" and ver != bound:
            return False
    if ver.prerelease:
        same = (ver.major, ver.minor, ver.patch)
        return any(b.prerelease and (b.major, b.minor, b.patch) == same for _, b in comps)
    return True


def _parse_comparator(part: str, whole: str) -> list[_Comparator]:
    match = _COMPARATOR.fullmatch(part)
    partial = _PARTIAL.fullmatch(match.group("ver")) if match else None
    if match is None or partial is None:
        raise ValueError(
            f"invalid version range {whole!r}: cannot parse {part!r} "
            "(expected e.g. '^1.4', '~1.4.2', '>=1.2,<2', '1.2.3' or '*')"
        )
    op = match.group("op") or "="
    raw = [partial.group("major"), partial.group("minor"), partial.group("patch")]
    nums: list[int] = []
    for piece in raw:
        if piece is None or piece in ("x", "X", "*"):
            break
        nums.append(int(piece))
    pre_text = partial.group("pre")
    pre = tuple(pre_text.split(".")) if pre_text else ()
    if len(nums) == 0:
        if op in ("=", ">=", "^", "~", "<="):
            return []  # "*", ">=*": anything
        raise ValueError(f"invalid version range {whole!r}: {part!r} matches nothing")
    major = nums[0]
    minor = nums[1] if len(nums) > 1 else 0
    patch = nums[2] if len(nums) > 2 else 0
    low = Version(major, minor, patch, pre)
    exact = len(nums) == 3

    def upper(level: int) -> Version:
        # The first version past the given precision: level 0 bumps major, 1 minor, 2 patch.
        if level == 0:
            return Version(major + 1, 0, 0, ("0",))
        if level == 1:
            return Version(major, minor + 1, 0, ("0",))
        return Version(major, minor, patch + 1, ("0",))

    if op == "^":
        # Caret: compatible within the left-most non-zero component.
        if major != 0 or len(nums) == 1:
            return [(">=", low), ("<", upper(0))]
        if minor != 0 or len(nums) == 2:
            return [(">=", low), ("<", upper(1))]
        return [(">=", low), ("<", upper(2))]
    if op == "~":
        return [(">=", low), ("<", upper(1 if len(nums) >= 2 else 0))]
    if op == "=":
        return [("=", low)] if exact else [(">=", low), ("<", upper(len(nums) - 1))]
    if op == ">":
        if exact:
            return [(">", low)]
        # ">1.2" is ">=1.3.0" -- a real release, not the synthetic "1.3.0-0" used for upper
        # bounds: as a lower bound that pre-release would let 1.3.0-alpha match (npm does not).
        bumped = upper(len(nums) - 1)
        return [(">=", Version(bumped.major, bumped.minor, bumped.patch))]
    if op == "<=":
        return [("<=", low)] if exact else [("<", upper(len(nums) - 1))]
    if op == "<" and not exact:
        # "<2" is "<2.0.0-0", as in npm: no 2.0.0 pre-release is below 2, even when another
        # comparator of the set names a 2.0.0 pre-release.
        return [("<", Version(major, minor, patch, ("0",)))]
    return [(op, low)]

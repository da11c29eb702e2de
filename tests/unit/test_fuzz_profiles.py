"""Property-based fuzzing of what ops staff feed ``firegw profiles check``: any YAML, and every shipped profile
mutated at random, gives success or one clear ``file: field: problem`` line per problem; never an exception."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.profiles.loader import check_paths
from tests.support import PROFILES, fuzz_examples

SHIPPED = sorted(p for p in PROFILES.glob("*.yaml") if not p.name.startswith("_"))

_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=20),
        st.sampled_from(["alarm", "MPa", "kPa", "holding", "float32", "big", "{device_id}", "-1", ""]),
    ),
    lambda kids: st.one_of(st.lists(kids, max_size=3), st.dictionaries(st.text(max_size=6), kids, max_size=3)),
    max_leaves=8,
)


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _paths(v, (*prefix, i))
    return out


def _mutate(doc: Any, path: tuple[Any, ...], op: str, value: Any) -> Any:
    if not path:
        return value
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    last = path[-1]
    if op == "delete":
        del parent[last]
    elif op == "extra" and isinstance(parent, dict):
        parent[f"{last}_extra"] = value
    else:
        parent[last] = value
    return doc


def _check(tmp: Path, text: str) -> None:
    f = tmp / "fuzzed.yaml"
    f.write_text(text, encoding="utf-8", errors="surrogatepass")
    problems = check_paths([f])
    for line in problems:  # file: field.path: what is wrong
        assert isinstance(line, str) and line.startswith(f"{f}: "), line
        field, sep, problem = line[len(str(f)) + 2 :].partition(": ")
        assert field and sep and problem.strip(), line


@pytest.mark.parametrize("profile", SHIPPED, ids=lambda p: p.stem)
@settings(max_examples=fuzz_examples(40), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), op=st.sampled_from(["replace", "delete", "extra"]), value=_values)
def test_mutated_shipped_profiles(tmp_path: Path, profile: Path, data: st.DataObject, op: str, value: Any) -> None:
    doc = yaml.safe_load(profile.read_text(encoding="utf-8"))
    path = data.draw(st.sampled_from(_paths(doc)))
    doc = _mutate(copy.deepcopy(doc), path, op, value)
    _check(tmp_path, yaml.safe_dump(doc, allow_unicode=True))


@settings(max_examples=fuzz_examples(200), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=400))
def test_any_text(tmp_path: Path, text: str) -> None:
    _check(tmp_path, text)


@pytest.mark.parametrize(
    "text",
    ["a: " + "[" * 100_000, "- " * 50_000 + "x", "\x00\x01", "&a [*a]", "a: &x [1]\nb: *y", "profile: " + "x" * 300],
)
def test_hostile_documents(tmp_path: Path, text: str) -> None:
    _check(tmp_path, text)

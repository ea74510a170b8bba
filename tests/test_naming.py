"""One convention for telling names apart: name, name-2, name-3 (predictions, CKA labels, run folders)."""

from __future__ import annotations

from napari_vesuvius_pt.naming import next_free, numbered, strip_number, unique_names


def test_repeats_are_numbered_from_two_and_never_collide():
    assert unique_names(["a", "b", "a", "a"]) == ["a", "b", "a-2", "a-3"]
    assert unique_names(["a", "a", "a-2"]) == ["a", "a-3", "a-2"]  # a name given as is keeps it
    assert unique_names([]) == []
    assert numbered("x", 1) == "x" and numbered("x", 4) == "x-4"


def test_next_free_counts_on_from_an_existing_number():
    taken = {"run", "run-2", "run-3"}
    assert next_free("new", taken.__contains__) == "new"
    assert next_free("run", taken.__contains__) == "run-4"
    assert next_free("run-2", taken.__contains__) == "run-4"  # not run-2-2
    assert strip_number("run-12") == "run" and strip_number("run-a") == "run-a" and strip_number("-3") == "-3"

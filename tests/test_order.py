"""The order `make test` starts the test files in (tests/conftest.py): longest recorded first."""
from types import SimpleNamespace

from conftest import ROOT, recorded_durations, slowest_files_first


def test_files_start_longest_first_each_files_tests_in_order_and_an_unrecorded_file_as_slow():
    items = [SimpleNamespace(nodeid=n) for n in
             ("tests/a.py::one", "tests/a.py::two", "tests/b.py::one", "tests/new.py::one", "tests/b.py::two")]
    ordered = [i.nodeid for i in slowest_files_first(items, {"tests/a.py": 3.0, "tests/b.py": 90.0})]
    assert ordered == ["tests/new.py::one", "tests/b.py::one", "tests/b.py::two", "tests/a.py::one", "tests/a.py::two"]


def test_the_recorded_durations_name_test_files_that_exist():
    recorded = recorded_durations()
    assert recorded, "tests/durations.json is missing: make test PYTEST_ADDOPTS=--store-durations"
    assert all((ROOT / name).is_file() and name.startswith("tests/test_") for name in recorded)
    assert all(seconds >= 0 for seconds in recorded.values())

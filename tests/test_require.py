"""The optional-dependency helper of conftest.py: skip on a developer machine, fail under CI=true."""

from pathlib import Path

import pytest
from conftest import require


def test_present_dependencies_are_returned(tmp_path):
    assert require("json", "why").dumps([1]) == "[1]"
    assert require(tmp_path, "why") == tmp_path


@pytest.mark.parametrize("missing", ["dermlow_no_such_module", Path("/no/such/chromium")])
def test_missing_dependency_skips_locally_and_fails_in_ci(monkeypatch, missing):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="needed for X: "):
        require(missing, "needed for X")
    for value in ("true", "1", "TRUE"):
        monkeypatch.setenv("CI", value)
        with pytest.raises(pytest.fail.Exception, match="CI=true, so a missing test dependency fails"):
            require(missing, "needed for X")
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception):
        require(missing, "needed for X")

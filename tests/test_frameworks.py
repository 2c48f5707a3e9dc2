"""REFINE_HOOKS_REQUIRE: a required framework that is missing, or any skip in its test folder, fails."""

import json
import shutil
from pathlib import Path

import pytest

from frameworks import REQUIRE_VARIABLE, TESTS, import_framework, required, required_framework_of

MISSING = "no_such_module_for_refine_hooks"


def test_a_missing_framework_skips_unless_required(monkeypatch):
    monkeypatch.delenv(REQUIRE_VARIABLE, raising=False)
    with pytest.raises(pytest.skip.Exception, match=MISSING):
        import_framework("detectron2", "json", MISSING)
    monkeypatch.setenv(REQUIRE_VARIABLE, "mmdet, detectron2")
    with pytest.raises(pytest.fail.Exception, match=f"requires detectron2, but {MISSING} does not import"):
        import_framework("detectron2", "json", MISSING)
    assert import_framework("detectron2", "json") is json  # what imports is returned


def test_required_frameworks_and_their_folders(monkeypatch):
    monkeypatch.setenv(REQUIRE_VARIABLE, "detectron2")
    assert required() == {"detectron2"}
    assert required_framework_of(TESTS / "detectron2_adapter" / "test_mask2former.py") == "detectron2"
    assert required_framework_of(TESTS / "mmdet_adapter" / "test_ddp.py") is None  # not required
    assert required_framework_of(TESTS / "core" / "test_prompts.py") is None
    monkeypatch.setenv(REQUIRE_VARIABLE, "detectron2,mmdetection")
    with pytest.raises(pytest.UsageError, match="mmdetection"):
        required()


@pytest.mark.parametrize("require", ["", "detectron2"])
def test_skips_in_a_required_frameworks_folder_fail(pytester, monkeypatch, require):
    """A pytest run over a copy of tests/conftest.py and frameworks.py, with skips in detectron2_adapter/."""
    for name in ("conftest.py", "frameworks.py"):
        shutil.copy(TESTS / name, pytester.path / name)
    folder = Path(pytester.mkdir("detectron2_adapter"))
    (folder / "test_skips.py").write_text(
        "import pytest\n\n"
        "def test_skipped():\n    pytest.skip('inside the test')\n\n"
        "@pytest.mark.skipif(True, reason='by marker')\ndef test_marked():\n    pass\n\n"
        "@pytest.mark.xfail(reason='expected')\ndef test_expected_failure():\n    assert False\n\n"
        "def test_passing():\n    pass\n")
    (folder / "test_module_skip.py").write_text("import pytest\n\npytest.importorskip('" + MISSING + "')\n")
    Path(pytester.mkdir("core"), "test_elsewhere.py").write_text(
        "import pytest\n\ndef test_skipped_elsewhere():\n    pytest.skip('not a framework folder')\n")
    monkeypatch.setenv(REQUIRE_VARIABLE, require)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--continue-on-collection-errors")
    if require:
        result.assert_outcomes(passed=1, failed=1, errors=2, skipped=1, xfailed=1)
        result.stdout.fnmatch_lines([f"*skipped, but {REQUIRE_VARIABLE} requires detectron2: *inside the test*"])
    else:
        result.assert_outcomes(passed=1, skipped=4, xfailed=1)

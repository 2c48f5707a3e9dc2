"""Puts tests/ on sys.path (pytest does so for a conftest outside a package), so that the adapters'
tests share ``tiny_coco`` and ``frameworks``.

Because tests/ is on sys.path, no folder here may be named like a package the code imports: a
``tests/detectron2`` folder would be imported as ``detectron2`` (an empty namespace package) wherever
Detectron2 is not installed. Hence ``detectron2_adapter`` and ``mmdet_adapter``.

With ``REFINE_HOOKS_REQUIRE`` naming a framework (see ``frameworks.py``), a skip in its test folder is
reported as a failure.
"""

import pytest

import frameworks

pytest_plugins = ["pytester"]  # tests/test_frameworks.py runs pytest on copies of this file


def pytest_configure(config):
    frameworks.required()  # an unknown framework name stops the run before collection


def _fail_required_skip(report, path) -> None:
    if not report.skipped or hasattr(report, "wasxfail"):
        return
    name = frameworks.required_framework_of(path)
    if name is None:
        return
    reason = report.longrepr[-1] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    report.outcome = "failed"
    report.longrepr = f"skipped, but {frameworks.REQUIRE_VARIABLE} requires {name}: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _fail_required_skip(outcome.get_result(), item.path)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    if getattr(collector, "path", None) is not None:
        _fail_required_skip(outcome.get_result(), collector.path)

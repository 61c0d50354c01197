"""The pytest plugin changes nothing in a project that does not ask for it
(contract 11): its own ``backend`` fixture and ``--backend`` option keep
working; only the suite and tests that request ``up_backend`` are
parametrized."""

from __future__ import annotations

from typing import Any

pytest_plugins = ["pytester"]

ARGS = ("-p", "no:cacheprovider", "--import-mode=importlib")


def test_project_backend_fixture_parametrized_is_untouched(pytester: Any) -> None:
    pytester.makepyfile(
        test_db="""
        import pytest

        @pytest.fixture(params=["sqlite", "postgres"])
        def backend(request):
            return request.param

        def test_db(backend):
            assert backend in ("sqlite", "postgres")
        """
    )
    result = pytester.runpytest_subprocess(*ARGS, "-v")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*test_db[[]sqlite[]] PASSED*", "*test_db[[]postgres[]] PASSED*"])


def test_project_plain_backend_fixture_is_untouched(pytester: Any) -> None:
    pytester.makepyfile(
        test_plain="""
        import pytest

        @pytest.fixture
        def backend():
            return "mine"

        def test_plain(backend):
            assert backend == "mine"
        """
    )
    pytester.runpytest_subprocess(*ARGS).assert_outcomes(passed=1)


def test_project_backend_option_is_kept(pytester: Any) -> None:
    pytester.makeconftest(
        """
        import pytest

        def pytest_addoption(parser):
            parser.addoption("--backend", action="store", default="sqlite")

        @pytest.fixture
        def backend(request):
            return request.config.getoption("--backend")
        """
    )
    pytester.makepyfile(
        test_opt="""
        def test_opt(backend):
            assert backend == "postgres"

        def test_ours(up_backend):
            assert up_backend.name == "numpy"
        """
    )
    result = pytester.runpytest_subprocess(*ARGS, "--backend", "postgres", "--up-backend", "numpy")
    result.assert_outcomes(passed=2)


def test_up_backend_parametrizes_over_selected_backends(pytester: Any) -> None:
    pytester.makepyfile(
        test_mine="""
        def test_model(up_backend):
            assert up_backend.name == "numpy"

        def test_not_mine():
            pass
        """
    )
    result = pytester.runpytest_subprocess(*ARGS, "-v", "--backend", "numpy")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*test_model[[]numpy[]] PASSED*", "*test_not_mine PASSED*"])


def test_suite_runs_on_one_backend(pytester: Any) -> None:
    result = pytester.runpytest_subprocess(*ARGS, "--pyargs", "unified_params.testing", "--backend", "numpy")
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed", 0) >= 20 and not outcomes.get("failed"), result.stdout.str()[-2000:]


def test_unknown_backend_is_an_error_not_a_skip(pytester: Any) -> None:
    result = pytester.runpytest_subprocess(*ARGS, "--pyargs", "unified_params.testing", "--backend", "nosuch")
    assert result.ret != 0
    result.stdout.fnmatch_lines(["*nosuch*"])

from orchestrator.stages.tester import parse_junit

JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" errors="1" failures="1" skipped="1" tests="5">
<testcase classname="tests.test_features" name="test_greet" time="0.01">
  <failure message="AssertionError: assert 'Hallo, Ada!' == 'Hello, Ada!'&#10;second line">trace</failure>
</testcase>
<testcase classname="tests.test_features" name="test_echo" time="0.01"/>
<testcase classname="tests.test_health" name="test_health" time="0.01"/>
<testcase classname="tests.test_x" name="test_skip"><skipped message="later"/></testcase>
<testcase classname="tests.test_x" name="test_boom"><error message="%s"/></testcase>
</testsuite></testsuites>""" % ("x" * 1000)


def test_junit_counts_outcomes_and_names_failing_tests_with_trimmed_messages():
    report = parse_junit(JUNIT)
    assert (report.passed, report.failed, report.errors, report.skipped) == (2, 1, 1, 1)
    assert not report.ok
    assert report.failing[0].name == "tests.test_features::test_greet"
    assert report.failing[0].message == "AssertionError: assert 'Hallo, Ada!' == 'Hello, Ada!'"
    assert len(report.failing[1].message) == 300


def test_unreadable_junit_is_an_error_not_a_pass():
    report = parse_junit("<testsuites><testcase")
    assert not report.ok and report.errors == 1


def test_a_run_with_no_tests_is_not_a_pass():
    assert not parse_junit("<testsuites><testsuite tests='0'/></testsuites>").ok

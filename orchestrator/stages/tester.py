"""Tester: the project's own pytest, in its worker, parsed from JUnit XML into a TestReport.

Failures go back to the Developer with the report, at most ``run.max_iterations`` times; then
a person is asked (an escalation: guidance for one more try, or cancel). The Tester works in a
worker of its own role, under the tester's AgentConfig (runtime, limits, time limit).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from agents import services as agent_services
from agents.contracts import FailingTest, TestReport
from agents.models import Role
from orchestrator import workers
from orchestrator.codehost import get_host
from orchestrator.stages import Next, Outcome, StageContext, StageFailed
from projects.models import PipelineRun, Stage

MESSAGE_LIMIT = 300


def run(ctx: StageContext) -> Outcome:
    prepared = ctx.output_of(Stage.PREPARER)
    developed = ctx.output_of(Stage.DEVELOPER, iteration=ctx.run.iteration)
    commit = developed["commit"]
    config = agent_services.agent_config_for(role=Role.TESTER)
    problem = config.time_limit_problem()
    if problem:
        raise StageFailed(problem, code="config_inconsistent")
    # The code host gets every implementation commit, and the run's pull request (GitHub).
    host = get_host(prepared.get("host", "local"))
    home = host.repo(ctx.project)
    if ctx.run.kind != PipelineRun.Kind.REDEPLOY:  # a redeploy changes nothing to review
        host.publish(ctx.project, home, branch=prepared["branch"], sha=commit)
        host.propose(
            ctx.project,
            home,
            branch=prepared["branch"],
            title=f"{ctx.project.name or ctx.project.slug}: run {ctx.run.id}",
            body=(ctx.run.request or ctx.project.description)[:4000],
        )
    session = workers.session_acquire(project_id=ctx.project.id, run_id=ctx.run.id, role=Role.TESTER, config=config)
    repo = workers.workspace_checkout(session, remote=prepared["repo"], branch=prepared["branch"], commit=commit)
    reports = Path(session.workspace) / "reports"
    reports.mkdir(parents=True, exist_ok=True)
    junit = reports / f"junit-{ctx.stage_run.id}.xml"
    junit.unlink(missing_ok=True)
    result = workers.session_exec(
        session,
        [
            workers.runtime_of(session).python,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:randomly",
            "-p",
            "no:django",
            f"--junitxml={junit}",
        ],
        cwd=repo,
        timeout=config.time_limit_seconds,
    )
    workers.session_idle(session=session, reason="tests finished")
    if junit.exists():
        report = parse_junit(junit.read_text())
    else:  # pytest did not get as far as writing a report
        tail = (result.stdout + result.stderr).strip()[-MESSAGE_LIMIT:]
        report = TestReport(errors=1, failing=[FailingTest(name="pytest", message=tail or f"exit {result.exit_code}")])
    output = {"commit": commit, "report": report.model_dump(), "exit_code": result.exit_code}
    host.report_tests(ctx.project, home, branch=prepared["branch"], sha=commit, ok=report.ok, summary=report.summary())
    if report.ok:
        return Outcome(output)
    if ctx.run.kind == PipelineRun.Kind.REDEPLOY:
        # Nobody writes code in a redeploy: going back to the Developer would change nothing.
        raise StageFailed(
            f"The deployed commit's own tests fail now: {report.summary()}; the live release keeps serving.",
            code="redeploy_tests_failed",
            output=output,
        )
    if ctx.run.iteration < ctx.run.max_iterations:
        return Outcome(output, Next.LOOP)
    raise StageFailed(
        f"The tests still fail after {ctx.run.iteration} iterations: {report.summary()}",
        code="tests_failed",
        output=output,
    )


def parse_junit(xml_text: str) -> TestReport:
    """Count outcomes per test case; keep failing tests' names with trimmed messages."""
    try:
        root = ET.fromstring(xml_text)
    except ET.ParseError as exc:
        return TestReport(errors=1, failing=[FailingTest(name="junit", message=f"unreadable report: {exc}")])
    passed = failed = errors = skipped = 0
    failing: list[FailingTest] = []
    for case in root.iter("testcase"):
        name = "::".join(p for p in (case.get("classname", ""), case.get("name", "")) if p)
        problem = next((c for c in case if c.tag in ("failure", "error")), None)
        if problem is not None:
            if problem.tag == "failure":
                failed += 1
            else:
                errors += 1
            message = (problem.get("message") or problem.text or "").strip().splitlines()
            failing.append(FailingTest(name=name, message=(message[0] if message else "")[:MESSAGE_LIMIT]))
        elif any(c.tag == "skipped" for c in case):
            skipped += 1
        else:
            passed += 1
    return TestReport(passed=passed, failed=failed, errors=errors, skipped=skipped, failing=failing[:20])

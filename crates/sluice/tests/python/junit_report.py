"""Parses a JUnit XML report with junitparser and prints what it holds as JSON.

Usage: junit_report.py REPORT.xml
Prints {"suites": [{"name", "tests", "failures", "errors", "cases": [{"name",
"classname", "results": [{"kind", "message", "text"}], "system_out"}]}]}.
A report junitparser cannot read fails with its exception.
"""

import json
import sys

from junitparser import Error, Failure, JUnitXml, Skipped

xml = JUnitXml.fromfile(sys.argv[1])
suites = []
for suite in xml:
    cases = []
    for case in suite:
        results = []
        for result in case.result:
            kind = {Failure: "failure", Error: "error", Skipped: "skipped"}.get(
                type(result), type(result).__name__
            )
            results.append(
                {"kind": kind, "message": result.message, "text": result.text}
            )
        cases.append(
            {
                "name": case.name,
                "classname": case.classname,
                "time": case.time,
                "results": results,
                "system_out": case.system_out,
            }
        )
    suites.append(
        {
            "name": suite.name,
            "tests": suite.tests,
            "failures": suite.failures,
            "errors": suite.errors,
            "cases": cases,
        }
    )
print(json.dumps({"suites": suites}))

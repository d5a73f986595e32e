"""Runs unittest modules (a driver's own test suite) and prints every test's outcome.

Usage: python unittest_outcomes.py MODULE...   (run from the directory holding the suite)

Prints one line per test, "OUTCOME<TAB>TEST ID" (OUTCOME: pass, fail, error, skip,
xfail, xpass), then "DONE". The server to test against comes as SUITE_PGHOST,
SUITE_PGPORT, SUITE_PGUSER, SUITE_PGPASSWORD and SUITE_PGDATABASE, set here as the PG*
variables the suite reads (the test harness strips PG* from what it runs).
"""

import os
import sys
import unittest


class Outcomes(unittest.TestResult):
    def __init__(self):
        super().__init__()
        self.lines = []

    def addSuccess(self, test):
        self.lines.append(("pass", test.id()))

    def addFailure(self, test, err):
        super().addFailure(test, err)
        self.lines.append(("fail", test.id()))

    def addError(self, test, err):
        super().addError(test, err)
        self.lines.append(("error", test.id()))

    def addSkip(self, test, reason):
        self.lines.append(("skip", test.id()))

    def addExpectedFailure(self, test, err):
        self.lines.append(("xfail", test.id()))

    def addUnexpectedSuccess(self, test):
        self.lines.append(("xpass", test.id()))


def main():
    # The suite's package is in the working directory, not beside this script.
    sys.path.insert(0, os.getcwd())
    for name in ("HOST", "PORT", "USER", "PASSWORD", "DATABASE"):
        value = os.environ.get(f"SUITE_PG{name}")
        if value is not None:
            os.environ[f"PG{name}"] = value
    suite = unittest.defaultTestLoader.loadTestsFromNames(sys.argv[1:])
    result = Outcomes()
    suite.run(result)
    for outcome, test in result.lines:
        print(f"{outcome}\t{test}")
    # The tracebacks, for whoever reads the log of a failing run.
    for test, trace in result.failures + result.errors:
        print(f"--- {test.id()}\n{trace}", file=sys.stderr)
    print("DONE")


if __name__ == "__main__":
    main()

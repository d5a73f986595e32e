"""What the driver scripts share: checks that collect every mismatch and report them at the
end (`check`, `finish`), and checks that stop a script at the first one (`check_or_fail`,
raising `Failed`)."""
import sys

FAILED = []


def check(label, got, expected):
    """Records a mismatch (named on stderr) and goes on."""
    if got != expected:
        FAILED.append(label)
        print(f"MISMATCH {label}: got {got!r}, expected {expected!r}", file=sys.stderr)


def finish(name):
    """Exits 1 naming the failed checks, if any; else says that all passed."""
    if FAILED:
        print(f"{name}: {len(FAILED)} check(s) failed: {FAILED}", file=sys.stderr)
        sys.exit(1)
    print(f"{name}: all checks passed")


class Failed(Exception):
    pass


def check_or_fail(label, got, expected):
    """Raises `Failed` on a mismatch; prints the check otherwise."""
    if got != expected:
        raise Failed(f"{label}: got {got!r}, expected {expected!r}")
    print(f"  ok {label}")

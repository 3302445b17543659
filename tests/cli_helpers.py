"""What the CLI tests share: a refused command prints exactly one line on stderr and exits 2."""

from __future__ import annotations


def refused(cli, *argv: str) -> str:
    """Run ``medloop *argv`` through the ``cli`` fixture; assert exit code 2 and a one-line stderr; return the line."""
    result = cli(*argv)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]

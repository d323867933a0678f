"""The shipped model through the command line, as a user first meets it: in the empty body of
a small class's method it writes code that uses the class's own names."""

import json
import subprocess
import sys
from pathlib import Path

CIRCLE = Path(__file__).parent / "data" / "circle.py"


def complete(line: int, col: int) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "dlm_lsp", "complete", str(CIRCLE), "--line", str(line),
         "--col", str(col), "--json", "--log-level", "error"],
        capture_output=True, text=True, timeout=600, check=True)
    return json.loads(out.stdout)


def test_an_empty_method_body_gets_code_that_uses_the_class():
    lines = CIRCLE.read_text().splitlines()
    row = lines.index("    def perimeter(self):") + 2  # the blank line under it, 1-based
    result = complete(row, 1)
    assert "self.radius" in result["text"], result
    assert result["steps"] <= result["canvas"]  # stopped when the block closed, or sooner

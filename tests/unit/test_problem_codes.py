"""Every problem code the API answers is in the error table of docs/api.md, with its status."""

import re
from pathlib import Path

from service.api import problems

ROOT = Path(__file__).resolve().parents[2]
_RAISED = re.compile(r'ApiError\(\s*(\d{3}),\s*"([a-z_]+)"')
_ROW = re.compile(r"^\| (\d{3}) \| `([a-z_]+)` \|", re.MULTILINE)


def answered() -> set[tuple[int, str]]:
    """(status, code) of every problem the API's code can answer."""
    codes = {(status, error.code) for error, status in problems._LEDGER_STATUS.items()}
    # The framework's 400s (parameter validation) are answered as 422 validation_error.
    codes |= {(status, code) for status, code in problems._HTTP_CODES.items() if status != 400}
    codes |= {(400, problems.ClientGone.code), (500, "internal_error")}
    for path in (ROOT / "service" / "api").rglob("*.py"):
        codes |= {(int(status), code) for status, code in _RAISED.findall(path.read_text())}
    return codes


def test_the_error_table_lists_every_code_the_api_answers() -> None:
    api = (ROOT / "docs" / "api.md").read_text()
    table = api.split("\n## Errors\n", 1)[1].split("\n## ", 1)[0]
    listed = {(int(status), code) for status, code in _ROW.findall(table)}
    assert answered() - listed == set()

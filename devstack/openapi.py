"""`python -m devstack.openapi PATH`: writes the OpenAPI document the API serves, without starting it.

`make install` builds the generated Java client once with it, so that Maven has every plugin and
library at hand and the tests run it offline (tests/e2e/test_generated_clients.py).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from service.api.app import create_app
from service.api.openapi import served_document


def main() -> None:
    path = Path(sys.argv[1])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(served_document(create_app(schema_head="offline")), indent=1))


if __name__ == "__main__":
    main()

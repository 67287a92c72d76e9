"""docs/contract.md documents exactly what the worker has: every setting it reads and
every route its web server registers, and nothing else.

Settings come from the ``Settings`` dataclass (each field is an environment variable);
routes from the web server of a built (not started) app. Names documented because the
contract requires them but implemented on a branch not merged yet are listed in
``PENDING``; once one is implemented here, this test fails until it leaves ``PENDING``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import fields

import pytest

from app.domain.settings import Settings
from tests.integration.harness import REPO

CONTRACT = REPO / "docs" / "contract.md"

PENDING_SETTINGS: dict[str, str] = {}
PENDING_ROUTES: dict[str, str] = {}


def section(title: str) -> str:
    text = CONTRACT.read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def documented_settings() -> set[str]:
    return set(re.findall(r"^\| `([A-Z][A-Z0-9_]*)` \|", section("Settings"), re.M))


def documented_routes() -> set[str]:
    return set(re.findall(r"^\| `GET (/[^`?\s]*)", section("HTTP"), re.M))


def code_settings() -> set[str]:
    return {f.name.upper() for f in fields(Settings)}


@pytest.fixture(scope="module")
def code_routes() -> set[str]:
    # A fresh interpreter: building the app reads the settings and declares tables once
    # per process, and the agent tests build theirs with other settings.
    env = {k: v for k, v in os.environ.items() if k not in code_settings()}
    env.update(STORE_URL="memory://", PYTHONPATH=str(REPO))
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import json; from app.main import app; print(json.dumps(sorted(app.web.views)))",
        ],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    routes: list[str] = json.loads(done.stdout.strip().splitlines()[-1])
    return set(routes)


def test_the_contract_lists_every_setting_and_no_other() -> None:
    documented, code = documented_settings(), code_settings()
    assert documented, "no settings table found in docs/contract.md"
    assert code - documented == set(), "settings the worker reads, missing in the doc"
    assert documented - code - set(PENDING_SETTINGS) == set(), "documented, not in the code"
    assert code & set(PENDING_SETTINGS) == set(), "implemented now: remove from PENDING"


def test_the_contract_lists_every_route_and_no_other(code_routes: set[str]) -> None:
    documented = documented_routes()
    assert len(code_routes) >= 15 and "/stock/{sku}" in code_routes
    assert code_routes - documented == set(), "routes the worker serves, missing in the doc"
    assert documented - code_routes - set(PENDING_ROUTES) == set(), "documented, not served"
    assert code_routes & set(PENDING_ROUTES) == set(), "implemented now: remove from PENDING"


def test_the_readme_links_the_contract_inside_the_repository() -> None:
    readme = (REPO / "README.md").read_text()
    assert "](docs/contract.md)" in readme
    # Every relative link of the README resolves inside a clone.
    for target in re.findall(r"\]\((?!https?://|#|mailto:)([^)#\s]+)", readme):
        path = (REPO / target).resolve()
        assert path.is_relative_to(REPO), f"README links outside the repository: {target}"
        assert path.exists(), f"README links a missing file: {target}"


def test_the_readme_http_table_is_one_table_with_every_route(code_routes: set[str]) -> None:
    readme = (REPO / "README.md").read_text()
    api = readme[readme.index("## HTTP API") :]
    lines = api.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("| request"))
    last = max(i for i, line in enumerate(lines) if line.startswith("| `GET "))
    # A blank line ends a Markdown table: every row must come before the first one.
    assert all(line.startswith("|") for line in lines[first : last + 1]), "table split"
    rows = set(re.findall(r"^\| `GET (/[^`?\s]*)", "\n".join(lines[first : last + 1]), re.M))
    assert code_routes <= rows, code_routes - rows

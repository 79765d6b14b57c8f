"""A stand-in for the factory's agent that runs ``.toml`` formulas (the demo's ``RUNNER_AGENT_COMMAND``).

Called as ``demo_agent <formula.toml> <action-id>``. It prints what it would do
and which declared secrets it received (names only), then exits 0 - or with
the code in ``DEMO_AGENT_EXIT`` when a test sets it in the formula file as
``exit_code = N``.
"""

from __future__ import annotations

import os
import sys
import time
import tomllib
from pathlib import Path

SECRET_NAMES = ("CLAWHUB_TOKEN", "GITHUB_TOKEN", "CODEBERG_TOKEN", "DEPLOY_KEY", "NPM_TOKEN", "DOCKER_HUB_TOKEN")


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: demo_agent FORMULA.toml ACTION_ID", file=sys.stderr)
        return 2
    formula_path, action_id = Path(argv[0]), argv[1]
    try:
        formula = tomllib.loads(formula_path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        print(f"demo agent: cannot read formula {formula_path}: {exc}", file=sys.stderr)
        return 2
    present = [n for n in SECRET_NAMES if os.environ.get(n)]
    print(f"demo agent: running formula {formula.get('name', formula_path.stem)} for action {action_id}")
    print(f"demo agent: secrets received: {', '.join(present) or 'none'}")
    print(f"demo agent: vault token visible to the formula: {'yes' if os.environ.get('VAULT_TOKEN') else 'no'}")
    time.sleep(float(formula.get("duration", 0.2)))
    code = int(formula.get("exit_code", 0))
    print(f"demo agent: done (exit {code})")
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""The Containerfile builds what the jobspecs run: every task command exists in the image it names."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import hcl2
import pytest

ROOT = Path(__file__).resolve().parent.parent
CONTAINERFILE = (ROOT / "Containerfile").read_text(encoding="utf-8")


def _targets() -> dict[str, str]:
    """Build target -> the image tag the Containerfile's header builds it as."""
    return dict((tag, target) for target, tag in re.findall(r"--target (\S+)\s+-t (\S+)", CONTAINERFILE))


def _unquote(value: object) -> str:
    """python-hcl2 (>= 7) keeps string quotes in names and values."""
    text = str(value)
    return text[1:-1] if len(text) >= 2 and text[0] == text[-1] == '"' else text


def _tasks(jobspec: str) -> list[tuple[str, str, list[str]]]:
    """(image, command, args) of every docker task, with variable defaults filled in."""
    doc = hcl2.loads((ROOT / "jobspecs" / jobspec).read_text(encoding="utf-8"))
    defaults = {_unquote(name): _unquote(body.get("default")) for var in doc.get("variable", []) for name, body in var.items()}
    found = []
    for job in doc["job"]:
        for body in job.values():
            for group in body.get("group", []):
                for gbody in group.values():
                    for task in gbody.get("task", []):
                        for tbody in task.values():
                            config = tbody.get("config", {})
                            config = config[0] if isinstance(config, list) else config
                            image = re.sub(r"\$\{var\.(\w+)\}", lambda m: defaults[m.group(1)], _unquote(config.get("image", "")))
                            found.append((image, _unquote(config.get("command", "")), [_unquote(a) for a in config.get("args", [])]))
    return found


@pytest.mark.parametrize("jobspec", ["reconciler.hcl", "vault-runner.hcl"])
def test_every_command_a_jobspec_runs_exists_in_the_image_it_names(jobspec: str) -> None:
    targets = _targets()
    tasks = _tasks(jobspec)
    assert tasks, f"no docker task found in {jobspec}"
    for image, command, args in tasks:
        assert image in targets, f"{jobspec} runs image {image}, which the Containerfile does not build ({sorted(targets)})"
        assert command == "python3", f"{jobspec}: {command!r} is not an entry point of the image"
        assert args[:1] == ["-m"], f"{jobspec}: python3 {args} does not run a module"
        module = args[1]
        spec = importlib.util.find_spec(module + ".__main__") or importlib.util.find_spec(module)
        assert spec is not None, f"{jobspec}: module {module} is not in the package the image installs"
        target = targets[image]
        stage = CONTAINERFILE[CONTAINERFILE.index(f"AS {target}") :]
        assert f'"python3", "-m", "{module}"' in stage.split("\nFROM ")[0], f"stage {target} does not start {module}"


def test_images_run_unprivileged_and_without_a_shell_entrypoint() -> None:
    stages = CONTAINERFILE.split("\nFROM ")[1:]
    for stage in stages:
        name = stage.split("\n", 1)[0]
        if name.endswith("AS build"):
            continue
        users = re.findall(r"^USER (\S+)", stage, re.M)
        assert users and users[-1] not in ("0", "root"), f"stage {name} ends as root"
        cmd = re.findall(r"^(?:CMD|ENTRYPOINT) (.+)$", stage, re.M)
        assert cmd and all(c.startswith("[") for c in cmd), f"stage {name} starts through a shell: {cmd}"


def test_the_build_copies_every_package_pyproject_installs() -> None:
    include = re.search(r'include = \[([^\]]+)\]', (ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert include is not None
    for pattern in re.findall(r'"([^"*]+)\*?"', include.group(1)):
        assert f"COPY {pattern} ./{pattern}" in CONTAINERFILE, f"the build stage does not copy {pattern}/"

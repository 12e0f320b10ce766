"""README: the two commands on top, and every environment variable documented."""

from __future__ import annotations

from services.cli.config import README, env_tables, settings_classes
from services.common.settings import env_vars


def test_readme_opens_with_the_two_commands() -> None:
    head = README.read_text(encoding="utf-8").splitlines()[:8]
    assert any(line.startswith("make demo") for line in head)
    assert any(line.startswith("make test") for line in head)


def test_readme_lists_every_environment_variable() -> None:
    readme = README.read_text(encoding="utf-8")
    assert env_tables() in readme, "regenerate with: stepaudio config env --write-readme"
    for _, cls in settings_classes():
        missing = [name for name, *_ in env_vars(cls) if f"`{name}`" not in readme]
        assert not missing, f"{cls.__name__}: {missing}"

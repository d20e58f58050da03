"""A site file's keys: a misspelt one is refused by name, at every level, not ignored."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.config import load_config
from flows.errors import PipelineError

GOOD = """
[clusters.prod]
servers = ["node-1:7000"]
bucket = "jaco-backups"
recipients = ["age1xyz"]
drill_every = 3
[clusters.prod.secrets]
token = "file:/etc/jaco/prod.token"
[clusters.prod.s3]
endpoint = "https://s3.example.internal"
[clusters.prod.retention]
daily = 9
[watchdog]
interval_seconds = "5m"
"""


def test_a_site_file_with_known_keys_loads(tmp_path: Path) -> None:
    site = tmp_path / "clusters.toml"
    site.write_text(GOOD)
    prod = load_config(site).clusters["prod"]
    assert prod.drill_every == 3 and prod.retention.daily == 9
    assert prod.s3.endpoint == "https://s3.example.internal"


@pytest.mark.parametrize(
    ("good", "typo", "named"),
    [
        ("drill_every = 3", "drill_evry = 3", "clusters.prod.drill_evry"),
        ('endpoint = "https', 'endpiont = "https', "clusters.prod.s3.endpiont"),
        ('token = "file:', 'tokn = "file:', "clusters.prod.secrets.tokn"),
        ("daily = 9", "dayly = 9", "clusters.prod.retention.dayly"),
        ('interval_seconds = "5m"', 'intervall = "5m"', "watchdog.intervall"),
        ("[watchdog]", "[watchdogs]", "watchdogs"),
    ],
)
def test_a_misspelt_key_is_refused_by_its_name(
    tmp_path: Path, good: str, typo: str, named: str
) -> None:
    site = tmp_path / "clusters.toml"
    assert good in GOOD
    site.write_text(GOOD.replace(good, typo))
    with pytest.raises(PipelineError) as refused:
        load_config(site)
    assert str(refused.value) == (
        f"{site} is not a valid jaco site configuration: unknown key {named} "
        "(a misspelt key would otherwise mean its default)"
    )

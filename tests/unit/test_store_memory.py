"""A store costs its S3 client, not a copy of botocore's model of S3.

Each store has its own boto3 session (one worker serves clusters with different credentials),
and each session loaded and parsed S3's service model again: 12 MiB and 140 ms a store. The
metrics endpoint, keeping a store per cluster, held 760 MiB for 50 clusters
(bench/catalog_scrape.py). The sessions now share one loader. Measured in a fresh process;
no store here reaches a server (a client makes no request until asked).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = """
import json
from flows.secrets import S3Settings
from flows.s3client import _loader
from flows.storage import open_store

def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20

settings = S3Settings(endpoint="http://127.0.0.1:9", region="us-east-1")
first = open_store("s3://one", settings)  # the first loads the model
before = rss()
stores = [open_store(f"s3://bucket-{n}", settings) for n in range(20)]
clients = len({id(s.client) for s in stores})
paths = len(_loader().search_paths)
more = [open_store(f"s3://bucket-{n}", settings) for n in range(50)]
figures = {"before": before, "after": rss(), "clients": clients}
print(json.dumps({**figures, "paths": [paths, len(_loader().search_paths)]}))
"""


def test_twenty_stores_cost_less_than_one_model_each() -> None:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True
    ).stdout
    figures = json.loads(out)
    assert figures["clients"] == 20  # one client (and session) per store, as before
    grown = figures["after"] - figures["before"]
    # one parsed model per store would be 20 x 12 MiB; a shared one leaves about 0.5 MiB each
    assert grown < 40, figures
    # and the shared loader does not grow with the stores opened (each boto3 session added
    # its data directory to the loader's search path again: unbounded in a long process)
    assert figures["paths"][1] == figures["paths"][0], figures


def test_a_store_s_own_profile_wins_over_a_broken_aws_profile(tmp_path: Path) -> None:
    """The loader is made without a session: AWS_PROFILE naming no profile does not stop a
    store whose settings name one that exists."""
    config = tmp_path / "config"
    config.write_text("[profile ops]\nregion = eu-west-1\n")
    credentials = tmp_path / "credentials"
    credentials.write_text("[ops]\naws_access_key_id = OPSKEY\naws_secret_access_key = x\n")
    env = {**os.environ, "AWS_PROFILE": "gone", "AWS_CONFIG_FILE": str(config),
           "AWS_SHARED_CREDENTIALS_FILE": str(credentials)}  # fmt: skip
    script = (
        "from flows.secrets import S3Settings\n"
        "from flows.storage import open_store\n"
        "store = open_store('s3://b', S3Settings(endpoint='http://127.0.0.1:9', profile='ops'))\n"
        "print(store.client._request_signer._credentials.access_key)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "OPSKEY"

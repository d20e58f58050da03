"""A store costs its S3 client, not a copy of botocore's model of S3.

Each store has its own boto3 session (one worker serves clusters with different credentials),
and each session loaded and parsed S3's service model again: 12 MiB and 140 ms a store. The
metrics endpoint keeps one store per cluster, so 50 clusters held 760 MiB
(bench/catalog_scrape.py). The sessions now share one loader. Measured in a fresh process;
no store here reaches a server (a client makes no request until asked).
"""

from __future__ import annotations

import json
import subprocess
import sys

SCRIPT = """
import json
from flows.secrets import S3Settings
from flows.storage import open_store

def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20

settings = S3Settings(endpoint="http://127.0.0.1:9", region="us-east-1")
first = open_store("s3://one", settings)  # the first loads the model
before = rss()
stores = [open_store(f"s3://bucket-{n}", settings) for n in range(20)]
clients = len({id(s.client) for s in stores})
print(json.dumps({"before": before, "after": rss(), "clients": clients}))
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

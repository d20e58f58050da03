"""Check what an operator sees in the Prefect UI of a running demo, with a real headless browser.

    python -m infra.demo --keep          # then:
    python -m infra.ui_check [--ui http://127.0.0.1:4200] [--out .demo/ui]

Loads the Deployments and Runs pages in headless Chromium (Debian: `apt-get install
chromium`), saves a screenshot of each, and fails unless the rendered Deployments page lists
every deployment the demo serves and the Runs page shows a completed backup and drill run.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

from infra.demo import DEPLOYMENTS

BUDGET_MS = "15000"  # virtual time for the single-page app to fetch and render


def browse(url: str, *what: str) -> str:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("no chromium: apt-get install chromium")
    done = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         "--window-size=1400,900", f"--virtual-time-budget={BUDGET_MS}", *what, url],
        capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        sys.exit(f"chromium failed on {url}: {done.stderr[-500:]}")
    return done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ui", default="http://127.0.0.1:4200")
    parser.add_argument("--out", type=Path, default=Path(".demo/ui"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    problems = []
    for page in ("deployments", "runs"):
        url = f"{args.ui}/{page}"
        browse(url, f"--screenshot={args.out / f'{page}.png'}")
        dom = browse(url, "--dump-dom")
        if page == "deployments":
            missing = [d for d in DEPLOYMENTS if d.split("/")[1] not in dom]
            if missing:
                problems.append(f"the Deployments page does not list {', '.join(missing)}")
        elif "Completed" not in dom or "backup-demo" not in dom or "drill-demo" not in dom:
            problems.append("the Runs page shows no completed backup-demo and drill-demo runs")
        print(f"{url}: screenshot {args.out / f'{page}.png'}")
    if problems:
        sys.exit("; ".join(problems))
    print("The UI shows every deployment and the completed runs.")


if __name__ == "__main__":
    main()

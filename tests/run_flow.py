"""Run one flow in a process of its own (for tests that kill it): `python -m tests.run_flow
backup|drill PARAMS_JSON [TIMEOUT]`. Exits 0 if the run completed."""

from __future__ import annotations

import sys

from flows.backup_flow import backup_cluster
from flows.drill_flow import drill_restore
from flows.params import BackupParams, DrillParams


def main() -> None:
    kind, raw = sys.argv[1], sys.argv[2]
    timeout = float(sys.argv[3]) if len(sys.argv) > 3 else None
    if kind == "backup":
        flow = backup_cluster.with_options(timeout_seconds=timeout) if timeout else backup_cluster
        state = flow(BackupParams.model_validate_json(raw), return_state=True)
    else:
        flow = drill_restore.with_options(timeout_seconds=timeout) if timeout else drill_restore
        state = flow(DrillParams.model_validate_json(raw), return_state=True)
    print(f"final state: {state.name}: {state.message}", flush=True)
    sys.exit(0 if state.is_completed() else 1)


if __name__ == "__main__":
    main()

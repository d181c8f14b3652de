"""Load test: many patients and doctors at once against the real system, then an audit.

    .venv/bin/python scripts/load_test.py [--patients 200] [--doctors 50] [--deadline-s 480]

Starts ``python -m predictor`` (two MPC parties on LeNet, doctor service, local chain, Ocean
publisher and download service) on 127.0.0.1 and ephemeral ports, then runs N patients
(each POSTs one slice and polls its case) and M doctors (pool -> claim -> signed image ->
sealed vote, 5 % of votes wrong so some panels widen) concurrently over HTTP. It prints
images/s and p50/p95 of POST->prediction and decision->settlement, then audits the database,
the Ocean publisher's state, the published CSV and the on-chain digest:

- every accepted case (HTTP 202) exists exactly once, and nothing else was stored;
- every case was escrowed exactly once; every settled case paid out exactly once, exactly its
  escrow (fund + escalations), to its agreeing doctors; the ledger balances;
- every settled case has exactly one research row, published exactly once (or held back by
  k-anonymity, reported), and the CSV whose digest is on chain holds exactly those rows.

Exits 1 on any lost or doubled record, 2 when the run did not finish within the deadline.
Bounded: a fixed number of patients and doctors, a wall-clock deadline, loopback only.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from load.clients import create_doctors  # noqa: E402  (needs the paths above)
from load.report import report  # noqa: E402
from load.scenario import parse_args, prepare, run_and_audit, setup_logging  # noqa: E402
from load.system import System, wait_ready  # noqa: E402

log = logging.getLogger("load_test")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv, description=__doc__.splitlines()[0])
    setup_logging("load_test")
    started = time.monotonic()
    deadline = started + args.deadline_s
    work, images = prepare(args, prefix="crypto-doctor-load-")
    system = System(work, args.model_path)
    system.start()
    try:
        asyncio.run(wait_ready(system, deadline))
        log.info("system ready after %.1f s", time.monotonic() - started)
        tokens = create_doctors(system.db_url, system.clinic_db_url, args.doctors)
        run = run_and_audit(system, images, tokens, args, deadline)
        code = report("load_test", run.figures, run.problems, run.extra(args), args.out)
    finally:
        rc = system.stop()
        log.info("system stopped (exit %s); total %.1f s", rc, time.monotonic() - started)
    if code == 0 and len(run.stats.accepted) < args.patients:
        print(f"[load_test] only {len(run.stats.accepted)} of {args.patients} patients got a 202")
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())

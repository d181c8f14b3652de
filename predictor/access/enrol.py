"""``python -m predictor.access.enrol``: the clinic enrols the doctors who may see its images.

    python -m predictor.access.enrol add --doctor-id ID --name "Dr A" --licence "GMC 1234567" \\
        --public-key KEY          # KEY: from the clinic's viewer page or the doctor client
    python -m predictor.access.enrol revoke --doctor-id ID    # a lost or compromised key
    python -m predictor.access.enrol list

This is the clinic's own command, run by its staff against its own store
(``--clinic-db-url``/``CRYPTO_DOCTOR_CLINIC_DB_URL``); the marketplace has no way to enrol anyone.
``ID`` is the doctor's id at the marketplace (shown on the doctor page): it is what the
marketplace's seat messages name. Re-enrolling an ID replaces its key and lifts a revocation.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime

from infra.settings import add_flags, flag, settings_from
from marketplace.errors import InvalidInput
from marketplace.storage import make_engine, make_sessionmaker
from predictor.access import store
from predictor.clinic.store import DEFAULT_CLINIC_DB_URL, migrate_clinic


@dataclass(frozen=True)
class EnrolSettings:
    clinic_db_url: str = field(
        default=DEFAULT_CLINIC_DB_URL, metadata=flag("the clinic's store (SQLAlchemy URL)")
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m predictor.access.enrol", description=__doc__.splitlines()[0]
    )
    add_flags(parser, EnrolSettings)
    sub = parser.add_subparsers(dest="command", required=True)
    add = sub.add_parser("add", help="enrol a vetted doctor and their public key")
    add.add_argument("--doctor-id", required=True)
    add.add_argument("--name", required=True)
    add.add_argument("--licence", required=True, help="a reference an auditor can follow")
    add.add_argument("--public-key", required=True)
    revoke = sub.add_parser("revoke", help="revoke a doctor's key")
    revoke.add_argument("--doctor-id", required=True)
    sub.add_parser("list", help="enrolled doctors (JSON lines)")
    args = parser.parse_args(argv)
    settings = settings_from(EnrolSettings, args)
    migrate_clinic(settings.clinic_db_url)
    engine = make_engine(settings.clinic_db_url)
    now = datetime.now(UTC)
    try:
        with make_sessionmaker(engine)() as session:
            if args.command == "add":
                store.enrol(
                    session,
                    doctor_id=args.doctor_id,
                    name=args.name,
                    licence=args.licence,
                    public_key=args.public_key,
                    now=now,
                )
                print(f"enrolled {args.doctor_id}")
            elif args.command == "revoke":
                if not store.revoke(session, doctor_id=args.doctor_id, now=now):
                    parser.exit(1, f"{args.doctor_id} is not enrolled\n")
                print(f"revoked {args.doctor_id}")
            else:
                for doctor in store.enrolled(session):
                    print(
                        json.dumps(
                            {
                                "doctor_id": doctor.doctor_id,
                                "name": doctor.name,
                                "licence": doctor.licence,
                                "enrolled_at": doctor.enrolled_at.isoformat(),
                                "revoked": doctor.revoked_at is not None,
                            }
                        )
                    )
    except InvalidInput as exc:
        parser.exit(2, f"{exc}\n")
    finally:
        engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())

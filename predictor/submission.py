"""The patient's use cases on party 0: submit an image, follow the case.

Blocking functions (file system and database); the patient API runs them in its DB pool.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.orm import Session, sessionmaker

from infra.tokens import hash_token, new_token
from marketplace.domain.status import CaseStatus
from predictor.clinic import cases
from predictor.images import ImageStore
from predictor.inference_queue import InferenceQueue
from predictor.uploads import AcceptedImage


@dataclass(frozen=True)
class Submission:
    case_id: str
    #: Shown to the patient once; only its hash is stored.
    patient_token: str
    status: CaseStatus


def submit_case(
    sessions: sessionmaker[Session],
    images: ImageStore,
    queue: InferenceQueue,
    image: AcceptedImage,
    *,
    now: datetime,
    teaching_consent: bool = False,
) -> Submission:
    """Store the image and its case durably, then queue it for encrypted inference.
    ``teaching_consent``: the patient's choice that the settled case may teach the model.

    The image is written (fsync) under a temporary name before the case row exists and
    renamed once the row is committed, so a failure leaves neither an orphan case nor a
    case without its image.
    """
    token = new_token()
    staged = images.stage(image.data, image.content_type)
    try:
        with sessions() as session:
            case_id = cases.create_case(
                session,
                patient_token_hash=hash_token(token),
                now=now,
                teaching_consent=teaching_consent,
            )
    except BaseException:
        staged.unlink(missing_ok=True)
        raise
    images.commit(staged, case_id)
    queue.submit(case_id)
    return Submission(case_id, token, CaseStatus.QUEUED)


def case_for_patient(
    sessions: sessionmaker[Session], case_id: str, patient_token: str
) -> cases.PatientView:
    """The case as its patient may see it (raises CaseNotFound / WrongPatientToken)."""
    with sessions() as session:
        return cases.patient_view(session, case_id, hash_token(patient_token))

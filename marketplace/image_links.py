"""Where a doctor sees a case's image: the clinic's viewer page, never the marketplace.

The marketplace only says which case to open; the clinic (party 0) authenticates the doctor's
own key, made and kept by its viewer page, and checks the seat the marketplace granted. The
marketplace holds no key or link that could fetch an image.
"""

from __future__ import annotations

from urllib.parse import urlencode


def viewer_url(patient_base_url: str, case_id: str, doctor_id: str) -> str:
    """``{patient_base_url}/viewer?case=<case_id>&doctor=<doctor_id>`` (url-encoded)."""
    query = urlencode({"case": case_id, "doctor": doctor_id})
    return f"{patient_base_url.rstrip('/')}/viewer?{query}"

"""The marketplace's image link: the clinic's viewer page for one case, carrying no credential."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

from marketplace.image_links import viewer_url


def test_the_link_opens_the_clinics_viewer_on_the_case_and_names_only_case_and_doctor() -> None:
    url = viewer_url("https://clinic.example:8443/", "a" * 32, "d" * 32)
    assert url == f"https://clinic.example:8443/viewer?case={'a' * 32}&doctor={'d' * 32}"


def test_odd_ids_cannot_add_parameters_or_change_the_path() -> None:
    split = urlsplit(viewer_url("http://p0", "x&sig=1#/image/y", "d/../e?z"))
    assert (split.netloc, split.path, split.fragment) == ("p0", "/viewer", "")
    assert parse_qs(split.query) == {"case": ["x&sig=1#/image/y"], "doctor": ["d/../e?z"]}

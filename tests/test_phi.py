"""PHI scrubbing: recall on notes with planted identifiers, and clinical content left alone."""

from __future__ import annotations

import numpy as np
import pytest

from neuroomics_bridge import DataError
from neuroomics_bridge.data.phi import PHI_TYPES, scrub_phi

FIRST = ["John", "Maria", "Wei", "Aisha", "Olu", "Sven", "Priya", "Jean-Luc", "Siobhan", "Kenji"]
LAST = ["Smith", "Garcia", "Chen", "Okafor", "Larsen", "Patel", "O'Brien", "Nakamura", "Dubois", "Kowalski"]
MONTHS = ["January", "Feb", "March", "Apr.", "May", "June", "Jul", "August", "Sept", "October", "Nov", "December"]
STREETS = ["Maple", "Oak Hill", "Church", "Station", "King George", "Elm"]
SUFFIXES = ["Street", "St", "Avenue", "Ave.", "Road", "Rd", "Lane", "Boulevard", "Drive", "Court", "Way"]
CLINICAL = [
    "MRI shows bilateral hippocampal atrophy.",
    "Expression of APOE and TREM2 is raised.",
    "Resting tremor and rigidity, worse on the left.",
    "Score 24/30 on the MoCA.",
    "No focal deficit. Plan: review in 6 months.",
]


def _planted(rng: np.random.Generator) -> tuple[str, str]:
    """One identifier of a random type, in one of several surface forms, with a cue sentence."""
    kind = str(rng.choice(PHI_TYPES))
    n = lambda k: "".join(str(d) for d in rng.integers(0, 10, k))  # noqa: E731
    name = f"{rng.choice(FIRST)} {rng.choice(LAST)}"
    month, day, year = str(rng.choice(MONTHS)), int(rng.integers(1, 29)), int(rng.integers(1950, 2030))
    forms = {
        "DATE": [
            f"{day:02d}/{rng.integers(1, 13):02d}/{year}",
            f"{year}-{rng.integers(1, 13):02d}-{day:02d}",
            f"{month} {day}, {year}",
            f"{day} {month} {year}",
            f"{rng.integers(1, 13)}/{day}/{str(year)[2:]}",
            f"{month} {year}",
        ],
        "PHONE": [f"({n(3)}) {n(3)}-{n(4)}", f"{n(3)}-{n(3)}-{n(4)}", f"+1 {n(3)} {n(3)} {n(4)}",
                  f"{n(3)}.{n(3)}.{n(4)}"],
        "FAX": [f"fax {n(3)}-{n(3)}-{n(4)}", f"Fax: ({n(3)}) {n(3)}-{n(4)}", f"FAX no. {n(3)} {n(3)} {n(4)}"],
        "EMAIL": [f"{name.split()[0].lower()}.{n(2)}@hospital.org", f"pt{n(4)}@mail.example.co.uk"],
        "URL": [f"https://portal.example.org/patient/{n(6)}", f"www.clinic{n(2)}.com/records?id={n(5)}"],
        "IP": [f"{rng.integers(1, 255)}.{rng.integers(0, 255)}.{rng.integers(0, 255)}.{rng.integers(1, 255)}",
               ":".join(f"{int(x):x}" for x in rng.integers(0, 65535, 8))],
        "ID": [f"MRN: {n(8)}", f"MRN {n(7)}", f"Account #{n(9)}", f"medical record number {n(6)}",
               f"{n(3)}-{n(2)}-{n(4)}", f"NHS number {n(3)} {n(3)} {n(4)}", f"{n(9)}"],
        "AGE>89": [f"{rng.integers(90, 110)}-year-old", f"{rng.integers(90, 110)} years old",
                   f"aged {rng.integers(90, 110)}", f"{rng.integers(90, 110)} y/o"],
        "NAME": [f"Dr. {name}", f"Mrs {rng.choice(LAST)}", f"Signed by {name}", f"Attending: {name}",
                 f"Prof. {rng.choice(LAST)}", f"Dictated by {name}, MD", f"Referred by Dr {rng.choice(LAST)}"],
        "ADDRESS": [f"{rng.integers(1, 9999)} {rng.choice(STREETS)} {rng.choice(SUFFIXES)}",
                    f"{rng.integers(1, 999)} {rng.choice(STREETS)} {rng.choice(SUFFIXES)}, Springfield, IL 62704"],
    }  # fmt: skip
    surface = str(rng.choice(forms[kind]))
    cue = {"NAME": "{x} reviewed the patient.", "ADDRESS": "Lives at {x}.", "AGE>89": "A {x} woman."}.get(
        kind, "Contact/reference: {x}."
    )
    return kind, cue.format(x=surface)


def _identifier(kind: str, sentence: str) -> str:
    """The part of a planted sentence that must disappear (names: the name itself, not the cue)."""
    core = sentence.removeprefix("Contact/reference: ").removeprefix("Lives at ").removeprefix("A ")
    core = core.removesuffix(" reviewed the patient.").removesuffix(" woman.").removesuffix(".")
    for cue in ("Dr. ", "Dr ", "Mrs ", "Prof. ", "Signed by ", "Attending: ", "Dictated by ", "Referred by "):
        core = core.replace(cue, "")
    core = core.removesuffix(", MD")
    for cue in ("fax ", "Fax: ", "FAX no. ", "MRN: ", "MRN ", "Account #", "medical record number ", "NHS number "):
        core = core.removeprefix(cue)
    return core.removesuffix(" years old").removesuffix("-year-old").removesuffix(" y/o").removeprefix("aged ")


def test_recall_on_planted_identifiers_is_at_least_0_99_per_type() -> None:
    rng = np.random.default_rng(0)
    found = {kind: [0, 0] for kind in PHI_TYPES}
    for _ in range(600):
        planted = [_planted(rng) for _ in range(3)]
        note = " ".join([str(rng.choice(CLINICAL)), *(s for _, s in planted), str(rng.choice(CLINICAL))])
        scrubbed = scrub_phi(note).text
        for kind, sentence in planted:
            found[kind][1] += 1
            found[kind][0] += _identifier(kind, sentence) not in scrubbed
    recall = {kind: hit / total for kind, (hit, total) in found.items()}
    assert all(total >= 100 for _, total in found.values()), found
    assert min(recall.values()) >= 0.99, recall


def test_clinical_content_and_ordinary_ages_are_kept() -> None:
    note = (
        "A 67-year-old man, seen in clinic. MRI shows bilateral hippocampal atrophy; APOE e4 carrier. "
        "Score 24/30 on the MoCA, dose 2.5 mg, review in 6 months. Impression: Alzheimer's disease."
    )
    result = scrub_phi(note)
    assert result.text == note and not result.counts


def test_placeholders_are_typed_and_counted() -> None:
    note = "Seen 03/04/2021 by Dr. Jane Smith (jane@site.org, 555-123-4567). MRN: 00123456. A 93-year-old man."
    result = scrub_phi(note)
    assert result.text == "Seen [DATE] by Dr. [NAME] ([EMAIL], [PHONE]). [ID]. A [AGE>89]-year-old man."
    assert result.counts == {"DATE": 1, "NAME": 1, "EMAIL": 1, "PHONE": 1, "ID": 1, "AGE>89": 1}
    assert scrub_phi(note, types=["EMAIL"]).text.count("[") == 1
    with pytest.raises(DataError, match="unknown PHI types"):
        scrub_phi(note, types=["SHOE_SIZE"])


@pytest.mark.parametrize(
    ("text", "scrubbed"),
    [
        ("Seen on March 3 for review.", "Seen on [DATE] for review."),
        ("Seen 3 March.", "Seen [DATE]."),
        ("DOB: 03/15", "DOB: [DATE]"),
        ("DOB 2021/03/15.", "DOB [DATE]."),
        ("15.03.2021 visit", "[DATE] visit"),
        ("A 95 y.o. man", "A [AGE>89] y.o. man"),
        ("Signed by: John Smith", "Signed by: [NAME]"),  # the colon after "by" hid the whole name
        ("Dictated by: Jane Doe, MD", "Dictated by: [NAME], MD"),
        ("Attending: Garcia, Maria", "Attending: [NAME]"),  # "Last, First": the first name too
        ("Seen by DR. SMITH today.", "Seen by DR. [NAME] today."),
        ("Admitted 15-Mar-2021.", "Admitted [DATE]."),
        ("Tel (555)123-4567", "Tel [PHONE]"),
        ("MS relapse, MS Lesions on MRI.", "MS relapse, MS Lesions on MRI."),  # MS: multiple sclerosis, not a title
    ],
)
def test_month_day_dates_and_other_common_forms_are_scrubbed(text: str, scrubbed: str) -> None:
    assert scrub_phi(text).text == scrubbed


@pytest.mark.parametrize(
    "text",
    ["Stain at 1/1000 dilution.", "Titrated 5-10-20 mg.", "titration 1.5.10", "BP 120/80, HR 72.",
     "Patients may 2 weeks later report relief.", "Grade 2/4 murmur."],
)  # fmt: skip
def test_doses_ratios_and_the_verb_may_are_not_dates(text: str) -> None:
    assert scrub_phi(text).text == text

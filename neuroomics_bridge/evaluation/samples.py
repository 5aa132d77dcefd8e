"""Small benchmark files in each published format, written by the project.

The real benchmarks are licensed (MedNLI needs PhysioNet credentials) and are not shipped; these
samples have the same layouts, so the loaders, the harness, the tests and the README example
run offline. The items are generated from a small table of textbook neurology facts (seeded
option order), and the summaries from the synthetic cohort's reports. They are for checking
the plumbing, not for ranking models.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

from neuroomics_bridge.io import atomic_directory

__all__ = ["write_benchmark_samples", "FACTS"]


class Fact(NamedTuple):
    """One row of the textbook table the sample items are written from (``None``: no such fact asked)."""

    disorder: str
    presentation: str
    structure: str
    gene: str | None
    drug: str | None


FACTS = (
    Fact(
        "Alzheimer's disease",
        "progressive episodic memory loss and word-finding difficulty",
        "hippocampus",
        "APOE",
        "donepezil",
    ),
    Fact(
        "Parkinson's disease",
        "resting tremor, bradykinesia and cogwheel rigidity",
        "substantia nigra",
        "SNCA",
        "levodopa",
    ),
    Fact(
        "Huntington's disease",
        "chorea, irritability and a father who died in his fifties",
        "caudate nucleus",
        "HTT",
        "tetrabenazine",
    ),
    Fact(
        "amyotrophic lateral sclerosis",
        "asymmetric limb weakness with fasciculations and brisk reflexes",
        "anterior horn cells",
        "SOD1",
        "riluzole",
    ),
    Fact(
        "multiple sclerosis",
        "optic neuritis followed a year later by numbness of both legs",
        "periventricular white matter",
        "HLA-DRB1",
        "interferon beta",
    ),
    Fact(
        "myasthenia gravis",
        "drooping eyelids and double vision that worsen through the day",
        "neuromuscular junction",
        None,
        "pyridostigmine",
    ),
    Fact(
        "frontotemporal dementia",
        "early disinhibition, apathy and loss of empathy",
        "frontal and anterior temporal lobes",
        "MAPT",
        None,
    ),
    Fact(
        "childhood absence epilepsy",
        "brief staring spells with 3 Hz spike-and-wave discharges",
        "thalamocortical circuits",
        None,
        "ethosuximide",
    ),
)

# (drug, adverse effect it induces, disorder it treats): chemical-induced disease, BC5CDR's subject.
ADVERSE = (
    ("levodopa", "dyskinesia", "Parkinson's disease"),
    ("haloperidol", "parkinsonism", "schizophrenia"),
    ("valproate", "hepatotoxicity", "epilepsy"),
    ("lithium", "tremor", "bipolar disorder"),
    ("tetrabenazine", "depression", "Huntington's disease"),
    ("donepezil", "bradycardia", "Alzheimer's disease"),
    ("carbamazepine", "hyponatremia", "trigeminal neuralgia"),
    ("amiodarone", "peripheral neuropathy", "atrial fibrillation"),
)

DDI = (
    ("@DRUG$ increases the plasma concentration of @DRUG$ by inhibiting CYP3A4.", "DDI-mechanism"),
    ("@DRUG$ reduces the absorption of @DRUG$ from the gut.", "DDI-mechanism"),
    ("@DRUG$ given with @DRUG$ may cause serotonin syndrome.", "DDI-effect"),
    ("The combination of @DRUG$ and @DRUG$ increased the risk of bleeding.", "DDI-effect"),
    ("@DRUG$ should not be used together with @DRUG$.", "DDI-advise"),
    ("Patients taking @DRUG$ should avoid @DRUG$.", "DDI-advise"),
    ("@DRUG$ interacts with @DRUG$.", "DDI-int"),
    ("An interaction between @DRUG$ and @DRUG$ has been reported.", "DDI-int"),
    ("@DRUG$ and @DRUG$ were both given to the control group.", "DDI-false"),
    ("Doses of @DRUG$ and @DRUG$ were recorded at each visit.", "DDI-false"),
)

HOC = (
    (
        "EGFR amplification drove continuous tumour cell division in the absence of growth factors.",
        ["sustaining proliferative signaling"],
    ),
    ("Loss of RB1 allowed cells to escape the G1 checkpoint.", ["evading growth suppressors"]),
    ("BCL2 overexpression protected lymphoma cells from apoptosis.", ["resisting cell death"]),
    ("Telomerase reactivation let the cells divide indefinitely.", ["enabling replicative immortality"]),
    ("VEGF secretion by the tumour recruited new blood vessels.", ["inducing angiogenesis"]),
    ("Loss of E-cadherin preceded invasion and distant metastasis.", ["activating invasion and metastasis"]),
    ("BRCA2-deficient tumours accumulated chromosomal rearrangements.", ["genomic instability and mutation"]),
    (
        "Tumour-associated macrophages released cytokines that fuelled growth and new vessel formation.",
        ["tumor promoting inflammation", "inducing angiogenesis"],
    ),
    ("Glioma cells switched to aerobic glycolysis, the Warburg effect.", ["cellular energetics"]),
    ("PD-L1 expression let the tumour evade cytotoxic T cells.", ["avoiding immune destruction"]),
    ("The cohort's median age at diagnosis was 61 years.", []),
)


def _options(rng: np.random.Generator, answer: str, pool: list[str], n: int) -> list[str]:
    distractors = [str(x) for x in rng.choice([p for p in pool if p != answer], n - 1, replace=False)]
    options = [answer, *distractors]
    return [options[i] for i in rng.permutation(n)]


def _medqa(rng: np.random.Generator) -> list[dict]:
    records = []
    disorders = [f.disorder for f in FACTS]
    drugs = [f.drug for f in FACTS if f.drug]
    for i, fact in enumerate(FACTS):
        age = 9 if fact.disorder.startswith("childhood") else int(rng.integers(35, 80))
        options = _options(rng, fact.disorder, disorders, 5)
        records.append(
            {"question": f"A {age}-year-old patient presents with {fact.presentation}. What is the most likely diagnosis?",  # noqa: E501
             "answer": fact.disorder, "options": dict(zip("ABCDE", options, strict=True)),
             "meta_info": "step1", "answer_idx": "ABCDE"[options.index(fact.disorder)], "id": f"medqa-{2 * i}"}
        )  # fmt: skip
        if fact.drug:
            options = _options(rng, fact.drug, drugs, 5)
            records.append(
                {"question": f"A patient has {fact.disorder}. Which drug is used to treat it?",
                 "answer": fact.drug, "options": dict(zip("ABCDE", options, strict=True)),
                 "meta_info": "step2&3", "answer_idx": "ABCDE"[options.index(fact.drug)], "id": f"medqa-{2 * i + 1}"}
            )  # fmt: skip
    return records


def _medmcqa(rng: np.random.Generator) -> list[dict]:
    records = []
    structures = [f.structure for f in FACTS]
    genes = [f.gene for f in FACTS if f.gene]
    for i, fact in enumerate(FACTS):
        asked = [("structure", f"Which structure is chiefly affected in {fact.disorder}?", fact.structure, structures)]
        if fact.gene:
            asked.append(("gene", f"Variants of which gene are linked to {fact.disorder}?", fact.gene, genes))
        for what, question, answer, pool in asked:
            options = _options(rng, answer, pool, 4)
            records.append(
                {"id": f"medmcqa-{i}-{what}", "question": question, "opa": options[0], "opb": options[1],
                 "opc": options[2], "opd": options[3], "cop": options.index(answer) + 1, "choice_type": "single",
                 "exp": f"{answer} in {fact.disorder}.", "subject_name": "Medicine", "topic_name": "Neurology"}
            )  # fmt: skip
    return records


def _pubmedqa(rng: np.random.Generator) -> dict[str, dict]:
    items = {}
    with_genes = [f for f in FACTS if f.gene]
    for i, fact in enumerate(with_genes):
        other = with_genes[(i + 1) % len(with_genes)]
        cases = (
            ("yes", fact.gene, [
                f"We genotyped {fact.gene} in {300 + 20 * i} patients with {fact.disorder} and matched controls.",
                f"Risk variants of {fact.gene} were more frequent in patients (odds ratio 2.{i + 1}, p < 0.001) and "
                "the association replicated in an independent cohort.",
            ]),
            ("no", other.gene, [
                f"We genotyped {other.gene} in {400 + 20 * i} patients with {fact.disorder} and matched controls.",
                f"Variant frequencies of {other.gene} did not differ between patients and controls "
                "(odds ratio 1.0, 95% CI 0.9-1.1), and no association was found.",
            ]),
            ("maybe", other.gene, [
                f"In a pilot study of 24 patients with {fact.disorder}, {other.gene} variants were found in three.",
                "The study was underpowered; the difference from controls did not reach significance and "
                "larger studies are needed.",
            ]),
        )  # fmt: skip
        for decision, gene, contexts in cases:
            pmid = str(30000000 + int(rng.integers(1, 9999999)))
            items[pmid] = {
                "QUESTION": f"Are {gene} variants associated with {fact.disorder}?",
                "CONTEXTS": contexts,
                "LABELS": ["METHODS", "RESULTS"],
                "MESHES": [fact.disorder.capitalize()],
                "YEAR": str(2015 + i),
                "reasoning_required_pred": decision,
                "reasoning_free_pred": decision,
                "final_decision": decision,
                "LONG_ANSWER": contexts[-1],
            }
    return items


def _mednli() -> list[dict]:
    records = []
    for i, fact in enumerate(f for f in FACTS if f.drug):
        premise = f"Patient with {fact.presentation}; diagnosed with {fact.disorder} and started on {fact.drug}."
        for j, (hypothesis, label) in enumerate(
            (
                (f"The patient takes {fact.drug}.", "entailment"),
                ("The patient receives no medication.", "contradiction"),
                (f"The patient's sister also has {fact.disorder}.", "neutral"),
            )
        ):
            records.append({"sentence1": premise, "sentence2": hypothesis, "gold_label": label, "pairID": f"n{i}-{j}"})
    return records


def _bionli() -> list[dict]:
    records = []
    for i, fact in enumerate(f for f in FACTS if f.gene):
        premise = (
            f"In {120 + 10 * i} patients with {fact.disorder}, carriers of {fact.gene} risk variants had symptom "
            f"onset 6 years earlier than non-carriers (p < 0.01) and greater loss in the {fact.structure}."
        )
        for hypothesis, label in (
            (f"{fact.gene} risk variants are associated with earlier onset of {fact.disorder}.", "consistent"),
            (f"{fact.gene} risk variants are associated with later onset of {fact.disorder}.", "inconsistent"),
        ):
            records.append({"premise": premise, "hypothesis": hypothesis, "label": label, "id": f"b{i}-{label}"})
    return records


def _bio_lines(tokens: list[tuple[str, str]]) -> str:
    return "".join(f"{token}\t{tag}\n" for token, tag in tokens) + "\n"


def _tagged(words: str, kind: str | None) -> list[tuple[str, str]]:
    parts = words.split()
    if kind is None:
        return [(w, "O") for w in parts]
    return [(w, ("B" if k == 0 else "I") + (f"-{kind}" if kind else "")) for k, w in enumerate(parts)]


def _bc5cdr() -> str:
    text = ""
    for drug, effect, disorder in ADVERSE:
        tokens = [
            *_tagged(drug.capitalize(), "Chemical"), *_tagged("induced", None), *_tagged(effect, "Disease"),
            *_tagged("in a patient with", None), *_tagged(disorder, "Disease"), (".", "O"),
        ]  # fmt: skip
        text += _bio_lines(tokens)
    return text


def _ncbi_disease() -> str:
    text = ""
    for fact in FACTS:
        subject = f"Variants in {fact.gene} are linked to" if fact.gene else "We studied 40 families with"
        tokens = [*_tagged(subject, None), *_tagged(fact.disorder, ""), (".", "O")]
        text += _bio_lines(tokens)
    return text


def _summaries(seed: int) -> list[dict]:
    from neuroomics_bridge.data.synthetic import synthetic_cohort

    cohort = synthetic_cohort(10, seed=seed, cells_per_subject=2, brain_resolution_mm=8)
    return [
        {"id": f"s{i}", "findings": report.split(" Impression:")[0], "impression": report.split("Impression: ")[-1]}
        for i, report in enumerate(cohort.reports or [])
    ]


def _jsonl(records: list[dict]) -> str:
    return "".join(json.dumps(record) + "\n" for record in records)


def write_benchmark_samples(directory: str | os.PathLike[str], *, seed: int = 0) -> Path:
    """Write one sample file per benchmark task under ``directory`` (atomically).

    Each file is named as :func:`task_files` looks for it (``pubmedqa.json``, ``medqa.jsonl`` ...,
    ``summarisation.jsonl``), in its benchmark's published layout; an existing ``directory`` is
    replaced as a whole.

    Parameters
    ----------
    directory
        The folder to create (``nob eval --data``).
    seed
        Seeds the option order and the synthetic cohort the summaries come from.

    Returns
    -------
    Path
        ``directory``.
    """
    rng = np.random.default_rng(seed)
    target = Path(directory)
    with atomic_directory(target, kind="benchmark sample folder", marker="pubmedqa.json") as tmp:
        (tmp / "pubmedqa.json").write_text(json.dumps(_pubmedqa(rng), indent=1) + "\n", encoding="utf-8")
        (tmp / "medqa.jsonl").write_text(_jsonl(_medqa(rng)), encoding="utf-8")
        (tmp / "medmcqa.json").write_text(_jsonl(_medmcqa(rng)), encoding="utf-8")  # JSON lines, as MedMCQA ships
        (tmp / "mednli.jsonl").write_text(_jsonl(_mednli()), encoding="utf-8")
        (tmp / "bionli.jsonl").write_text(_jsonl(_bionli()), encoding="utf-8")
        (tmp / "bc5cdr.tsv").write_text(_bc5cdr(), encoding="utf-8")
        (tmp / "ncbi-disease.tsv").write_text(_ncbi_disease(), encoding="utf-8")
        ddi = "index\tsentence\tlabel\n" + "".join(f"{i}\t{s}\t{label}\n" for i, (s, label) in enumerate(DDI))
        (tmp / "ddi.tsv").write_text(ddi, encoding="utf-8")
        hoc = [{"id": f"hoc-{i}", "text": t, "labels": labels} for i, (t, labels) in enumerate(HOC)]
        (tmp / "hoc.jsonl").write_text(_jsonl(hoc), encoding="utf-8")
        (tmp / "summarisation.jsonl").write_text(_jsonl(_summaries(seed)), encoding="utf-8")
    return target


if __name__ == "__main__":
    import sys

    print(write_benchmark_samples(sys.argv[1] if len(sys.argv) > 1 else "examples/data/benchmarks"))

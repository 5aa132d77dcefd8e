"""A synthetic neuro-omics cohort with a known latent structure.

Generative model (all draws from one ``numpy`` generator seeded by ``seed``):

- **Subjects.** Diagnosis uniform over ``DIAGNOSES`` (control, Alzheimer's disease,
  Parkinson's disease, frontotemporal dementia). Severity 0 for controls, U(0.3, 1) for patients.
  Age ~ N(68, 8) clipped to [45, 90], with +3 years per unit severity; sex and one of three
  sites uniform.
- **Genes** (``cells_per_subject`` cells per subject). Counts are negative binomial
  (Gamma-Poisson, dispersion ``theta=4``) around a per-gene baseline (log-normal across genes)
  times a per-cell size factor (log-normal, sd 0.3). Each disorder up-regulates its own
  programme of 15 risk genes by a log fold change of ``1.5 * severity`` (gene-specific weight
  U(0.5, 1.5)); sex drives XIST / RPS4Y1; age adds a small effect on 30 genes; each site
  multiplies every gene by exp(N(0, 0.2)) (batch effect). Background genes are the 765 real
  symbols of scanpy's ``pbmc68k_reduced``.
- **Brains** (grey-matter maps on nilearn's MNI152 grid, ``brain_resolution_mm``). The MNI152
  grey-matter template, multiplied by ``1 - 0.45 * severity * blobs`` where ``blobs`` are
  Gaussian spheres (sigma 8 mm) at the disorder's characteristic regions (hippocampi and
  posterior cingulate for AD; putamen, caudate and substantia nigra for PD; frontal poles,
  anterior cingulate and temporal poles for FTD), by ``1 - 0.004 * (age - 68)`` (ageing), by a
  site gain U(0.92, 1.08) plus a site offset; plus smoothed Gaussian noise (sd 0.04).
- **Reports.** A short clinical report written from the latent variables with randomly chosen
  phrasings: history, imaging and expression findings graded by severity, and an impression
  naming the diagnosis (mild patients get tentative wording).
- **Missing modalities.** With ``missing_rate`` > 0, that fraction of subjects lacks genes and
  (independently) that fraction lacks an image, never both.

The signal is learnable but not trivial: mild patients differ little from controls in both
modalities, site and age effects overlap the disease effects, and expression is sparse.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from neuroomics_bridge.data.cohort import Cohort

__all__ = ["DIAGNOSES", "GENE_PROGRAMMES", "severity_grade", "synthetic_cohort"]

DIAGNOSES = ("control", "Alzheimer's disease", "Parkinson's disease", "frontotemporal dementia")
SHORT = {"control": "CN", "Alzheimer's disease": "AD", "Parkinson's disease": "PD", "frontotemporal dementia": "FTD"}
GENE_PROGRAMMES = {
    "Alzheimer's disease": (
        "APOE", "APP", "PSEN1", "PSEN2", "TREM2", "CLU", "BIN1", "PICALM", "CR1", "ABCA7", "SORL1", "CD33",
        "MS4A6A", "PLCG2", "SPI1",
    ),
    "Parkinson's disease": (
        "SNCA", "LRRK2", "PRKN", "PINK1", "GBA1", "VPS35", "TMEM175", "GCH1", "RAB29", "SYT11", "DNAJC6",
        "ATP13A2", "FBXO7", "SNCAIP", "UCHL1",
    ),
    "frontotemporal dementia": (
        "GRN", "C9orf72", "MAPT", "TBK1", "VCP", "CHMP2B", "TARDBP", "FUS", "SQSTM1", "OPTN", "TMEM106B",
        "CHCHD10", "UBQLN2", "CCNF", "TIA1",
    ),
}  # fmt: skip
ATROPHY_CENTRES_MM = {
    "Alzheimer's disease": ((-26, -20, -14), (28, -20, -14), (0, -52, 26)),
    "Parkinson's disease": ((-24, 4, 2), (24, 4, 2), (-12, 12, 10), (12, 12, 10), (-10, -16, -10), (10, -16, -10)),
    "frontotemporal dementia": ((-24, 56, 0), (24, 56, 0), (0, 36, 20), (-40, 14, -30), (40, 14, -30)),
}
SITES = ("site-A", "site-B", "site-C")
MIN_SEVERITY = 0.3  # mildest patients: below ~0.3 even a supervised classifier takes them for controls
GENE_EFFECT = 1.5  # log fold change of a disorder's programme at severity 1 (times a gene weight)
ATROPHY_EFFECT = 0.45  # grey-matter loss at the centre of a disorder's regions at severity 1

_IMAGING = {
    "control": ("no focal atrophy", "age-appropriate grey matter volume", "unremarkable grey matter"),
    "Alzheimer's disease": (
        "{s} bilateral hippocampal atrophy",
        "{s} medial temporal lobe atrophy with posterior cingulate thinning",
        "{s} volume loss in the hippocampi",
    ),
    "Parkinson's disease": (
        "{s} grey matter loss in the putamen and caudate",
        "{s} basal ganglia atrophy",
        "{s} striatal volume reduction with midbrain involvement",
    ),
    "frontotemporal dementia": (
        "{s} frontal and anterior temporal atrophy",
        "{s} volume loss of the frontal poles and temporal poles",
        "{s} frontotemporal grey matter loss",
    ),
}
_HISTORY = {
    "control": ("no cognitive or motor complaints", "a normal neurological examination", "no neurological history"),
    "Alzheimer's disease": ("progressive episodic memory decline", "forgetfulness and word-finding difficulty"),
    "Parkinson's disease": ("resting tremor and bradykinesia", "slowness of movement with rigidity"),
    "frontotemporal dementia": ("behavioural change and disinhibition", "apathy with loss of empathy"),
}
_IMPRESSION = {
    "firm": ("Impression: {d}.", "Impression: findings consistent with {d}.", "Impression: {d}, {s} stage."),
    "tentative": ("Impression: possible early {d}.", "Impression: findings suggestive of mild {d}."),
    "control": ("Impression: control, no evidence of neurodegeneration.", "Impression: control subject."),
}


def synthetic_cohort(
    n_subjects: int = 200,
    *,
    seed: int = 0,
    cells_per_subject: int = 20,
    brain_resolution_mm: int = 4,
    missing_rate: float = 0.0,
) -> Cohort:
    """Draw a cohort from the generative model in this module's docstring.

    Encode it with :meth:`Cohort.encode`, or write it out with :meth:`Cohort.to_files`.

    Parameters
    ----------
    n_subjects
        Subjects drawn (ids ``sub-0000`` ...).
    seed
        Seeds the one generator every draw comes from.
    cells_per_subject
        Cells per subject in ``genes``.
    brain_resolution_mm
        Voxel size of the MNI152 grid of the images.
    missing_rate
        Fraction of subjects without genes and, independently, fraction without an image (never both).

    Returns
    -------
    Cohort
        Raw sources only (``genes`` AnnData with counts in ``X`` and ``obs['subject_id']``; one
        in-memory NIfTI per subject in ``brains``), ``reports``, ``labels`` (diagnoses),
        ``covariates`` (age, sex, site) and ``phenotypes`` (severity).
    """
    rng = np.random.default_rng(seed)
    subject_ids = [f"sub-{i:04d}" for i in range(n_subjects)]
    diagnosis = rng.choice(len(DIAGNOSES), size=n_subjects)
    severity = np.where(diagnosis == 0, 0.0, rng.uniform(MIN_SEVERITY, 1.0, n_subjects))
    age = np.clip(rng.normal(68, 8, n_subjects) + 3 * severity, 45, 90).round()
    sex = rng.choice(["F", "M"], size=n_subjects)
    site = rng.choice(len(SITES), size=n_subjects)
    has_genes, has_brain = _missing_masks(rng, n_subjects, missing_rate)

    labels = [DIAGNOSES[d] for d in diagnosis]
    genes = _expression(rng, subject_ids, labels, severity, age, sex, site, cells_per_subject, has_genes)
    brains = _brains(rng, labels, severity, age, site, brain_resolution_mm, has_brain)
    reports = [_report(rng, labels[i], severity[i], age[i], sex[i]) for i in range(n_subjects)]
    covariates = pd.DataFrame({"age": age, "sex": sex, "site": [SITES[s] for s in site]}, index=subject_ids)
    phenotypes = pd.DataFrame({"severity": severity.round(3)}, index=subject_ids)
    return Cohort(
        subject_ids=subject_ids,
        reports=reports,
        labels=labels,
        covariates=covariates,
        phenotypes=phenotypes,
        genes=genes,
        brains=brains,
    )


def _missing_masks(rng: np.random.Generator, n: int, rate: float) -> tuple[np.ndarray, np.ndarray]:
    draw = rng.uniform(size=n)
    has_genes = draw >= rate
    has_brain = (draw < rate) | (draw >= 2 * rate)
    return has_genes, has_brain


def _gene_names() -> list[str]:
    import scanpy as sc

    programme = [g for genes in GENE_PROGRAMMES.values() for g in genes]
    background = [g for g in sc.datasets.pbmc68k_reduced().var_names if g not in programme]
    return programme + ["XIST", "RPS4Y1"] + [g for g in background if g not in ("XIST", "RPS4Y1")]


def _expression(rng, subject_ids, labels, severity, age, sex, site, cells_per_subject, has_genes):
    import anndata as ad
    import scipy.sparse as sp

    names = _gene_names()
    n_genes = len(names)
    baseline = rng.lognormal(mean=-1.0, sigma=1.3, size=n_genes)
    site_effect = rng.normal(0, 0.2, size=(len(SITES), n_genes))
    n_programme = sum(len(genes) for genes in GENE_PROGRAMMES.values()) + 2  # programmes, XIST, RPS4Y1
    age_genes = rng.choice(np.arange(n_programme, n_genes), size=30, replace=False)
    column = {g: j for j, g in enumerate(names)}
    programme_weights = {d: rng.uniform(0.5, 1.5, len(genes)) for d, genes in GENE_PROGRAMMES.items()}
    blocks, obs = [], []
    for i, subject in enumerate(subject_ids):
        if not has_genes[i]:
            continue
        log_mean = np.log(baseline) + site_effect[site[i]]
        log_mean[age_genes] += 0.15 * (age[i] - 68) / 10
        log_mean[column["XIST" if sex[i] == "F" else "RPS4Y1"]] += 3.0
        if labels[i] in GENE_PROGRAMMES:
            cols = [column[g] for g in GENE_PROGRAMMES[labels[i]]]
            log_mean[cols] += GENE_EFFECT * severity[i] * programme_weights[labels[i]]
        size = rng.lognormal(0, 0.3, size=(cells_per_subject, 1))
        mean = size * np.exp(log_mean)[None, :]
        counts = rng.poisson(rng.gamma(shape=4.0, scale=mean / 4.0))
        blocks.append(sp.csr_matrix(counts.astype(np.float32)))
        obs += [subject] * cells_per_subject
    cells = ad.AnnData(
        X=sp.vstack(blocks).tocsr() if blocks else sp.csr_matrix((0, n_genes), dtype=np.float32),
        obs=pd.DataFrame({"subject_id": pd.Categorical(obs)}, index=[f"cell-{k:06d}" for k in range(len(obs))]),
        var=pd.DataFrame(index=names),
    )
    return cells


def _brains(rng, labels, severity, age, site, resolution, has_brain):
    import nibabel as nib
    from nibabel.affines import apply_affine
    from nilearn.datasets import load_mni152_brain_mask, load_mni152_gm_template
    from scipy.ndimage import gaussian_filter

    template = load_mni152_gm_template(resolution=resolution)
    mask = np.asanyarray(load_mni152_brain_mask(resolution=resolution).dataobj) > 0
    grey = np.asanyarray(template.dataobj, dtype=np.float32) * mask
    xyz = apply_affine(template.affine, np.indices(grey.shape).reshape(3, -1).T).reshape(*grey.shape, 3)
    blobs = {
        d: np.clip(sum(np.exp(-((xyz - c) ** 2).sum(-1) / (2 * 8.0**2)) for c in centres), 0, 1).astype(np.float32)
        for d, centres in ATROPHY_CENTRES_MM.items()
    }
    gains = rng.uniform(0.92, 1.08, len(SITES))
    offsets = rng.normal(0, 0.01, len(SITES))
    images: list[object] = []
    for i, label in enumerate(labels):
        # Drawn for every subject, so that missing images do not shift later subjects' draws.
        noise = gaussian_filter(rng.normal(0, 0.04, grey.shape).astype(np.float32), sigma=1.0) * 2.5
        if not has_brain[i]:
            images.append(None)
            continue
        atrophy = 1 - ATROPHY_EFFECT * severity[i] * blobs[label] if label in blobs else 1.0
        data = grey * atrophy * (1 - 0.004 * (age[i] - 68)) * gains[site[i]] + offsets[site[i]] + noise
        images.append(nib.Nifti1Image((data * mask).astype(np.float32), template.affine))
    return images


def severity_grade(severity: float) -> str | None:
    """The word a report uses for a severity.

    Returns
    -------
    str or None
        ``None`` without disease (0, as for controls; also negative or NaN), ``"mild"`` below
        0.45, ``"moderate"`` below 0.75, else ``"marked"``.
    """
    if not severity > 0:
        return None
    return "mild" if severity < 0.45 else "moderate" if severity < 0.75 else "marked"


def _report(rng: np.random.Generator, label: str, severity: float, age: float, sex: str) -> str:
    grade = severity_grade(severity)
    person = "woman" if sex == "F" else "man"
    history = rng.choice(_HISTORY[label])
    imaging = str(rng.choice(_IMAGING[label])).format(s=grade).capitalize()
    if label == "control":
        genes = rng.choice(
            ("Expression profile within the reference range.", "No disease gene programme is up-regulated.")
        )
        impression = rng.choice(_IMPRESSION["control"])
    else:
        programme = GENE_PROGRAMMES[label]
        shown = ", ".join(rng.choice(programme, size=3, replace=False))
        genes = rng.choice(
            (f"Expression profile shows up-regulation of {shown}.", f"Transcriptomics: raised {shown} expression.")
        )
        wording = "tentative" if severity < 0.45 else "firm"
        impression = str(rng.choice(_IMPRESSION[wording])).format(d=label, s=grade)
    opening = rng.choice((f"{int(age)}-year-old {person} with {history}.", f"A {person} aged {int(age)}; {history}."))
    return f"{opening} MRI: {imaging}. {genes} {impression}"

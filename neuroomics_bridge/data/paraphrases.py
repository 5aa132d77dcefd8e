"""Class wordings in other words: five sets per class for pbmc68k's cell types and the synthetic
diagnoses, written for the paraphrase benchmark (``benchmarks/bench_paraphrase.py``).

Each set states the same facts as the training texts (:data:`~neuroomics_bridge.data.pbmc.PBMC_CELL_TYPES`,
the synthetic reports' ``Impression: <diagnosis>.``) in deliberately different vocabulary: lay
terms, textbook terms, marker-only descriptions, functional descriptions and abbreviations. A user
will word classes their own way; zero-shot accuracy should not depend on which way. Together the
sets also make a prompt ensemble (:func:`~neuroomics_bridge.reports.prompts.prompt_ensemble`).
"""

from __future__ import annotations

__all__ = ["DIAGNOSIS_WORDING_SETS", "PBMC_WORDING_SETS"]

PBMC_WORDING_SETS: dict[str, dict[str, str]] = {
    "lay": {
        "CD14+ Monocyte": "A large white blood cell that eats germs and debris in the bloodstream.",
        "CD19+ B": "A white blood cell that produces the proteins that tag invaders.",
        "CD34+": "A young blood-forming cell that can still turn into many kinds of blood cell.",
        "CD4+/CD25 T Reg": "A white blood cell that calms the immune system down and prevents overreaction.",
        "CD4+/CD45RA+/CD25- Naive T": "A fresh helper white blood cell that has not yet seen any infection.",
        "CD4+/CD45RO+ Memory": "A helper white blood cell that remembers an infection it fought before.",
        "CD56+ NK": "A first-line killer white blood cell that destroys infected cells without training.",
        "CD8+ Cytotoxic T": "An experienced killer white blood cell that destroys infected cells it recognises.",
        "CD8+/CD45RA+ Naive Cytotoxic": "An untrained killer white blood cell that has never met its target.",
        "Dendritic": "A messenger white blood cell that shows pieces of germs to other immune cells.",
    },
    "textbook": {
        "CD14+ Monocyte": "Peripheral blood monocyte of the classical subset, a phagocytic mononuclear leukocyte.",
        "CD19+ B": "B lymphocyte of the humoral adaptive immune system, precursor of plasma cells.",
        "CD34+": "Haematopoietic stem and progenitor cell, a multipotent precursor of the marrow.",
        "CD4+/CD25 T Reg": "Treg, a suppressive subset of thymus-derived helper lymphocytes maintaining tolerance.",
        "CD4+/CD45RA+/CD25- Naive T": "Antigen-inexperienced T helper lymphocyte recently emigrated from the thymus.",
        "CD4+/CD45RO+ Memory": "Antigen-experienced T helper lymphocyte of the memory compartment.",
        "CD56+ NK": "Large granular lymphocyte of innate immunity mediating natural cytotoxicity.",
        "CD8+ Cytotoxic T": "Effector cytotoxic T lymphocyte that lyses MHC class I presenting targets.",
        "CD8+/CD45RA+ Naive Cytotoxic": "Antigen-inexperienced cytotoxic T lymphocyte of the naive pool.",
        "Dendritic": "Professional antigen-presenting leukocyte that initiates adaptive immune responses.",
    },
    "markers": {
        "CD14+ Monocyte": "CD14-high cell with FCN1, VCAN, CST3 and S100A9 transcripts.",
        "CD19+ B": "Cell with MS4A1, CD79B, IGHM and CD22 transcripts.",
        "CD34+": "CD34-positive cell with PROM1, KIT and SOX4 transcripts.",
        "CD4+/CD25 T Reg": "CD4 cell with IL2RA, FOXP3, CTLA4 and IKZF2 transcripts.",
        "CD4+/CD45RA+/CD25- Naive T": "CD4 cell with CCR7, SELL, LEF1 and TCF7 transcripts.",
        "CD4+/CD45RO+ Memory": "CD4 cell with IL7R, S100A4, CD44 and ANXA1 transcripts.",
        "CD56+ NK": "CD3-negative cell with NCAM1, KLRD1, PRF1 and FCGR3A transcripts.",
        "CD8+ Cytotoxic T": "CD8B cell with GZMK, GZMH, CCL5 and NKG7 transcripts.",
        "CD8+/CD45RA+ Naive Cytotoxic": "CD8B cell with CCR7, SELL and LEF1 transcripts.",
        "Dendritic": "Cell with CD1C, CLEC10A, HLA-DQA1 and LILRA4 transcripts.",
    },
    "function": {
        "CD14+ Monocyte": "Engulfs pathogens, releases inflammatory cytokines and becomes a tissue macrophage.",
        "CD19+ B": "Recognises antigen with its receptor and differentiates to secrete immunoglobulin.",
        "CD34+": "Self-renews and gives rise to the myeloid and lymphoid lineages.",
        "CD4+/CD25 T Reg": "Suppresses effector lymphocytes and prevents autoimmunity.",
        "CD4+/CD45RA+/CD25- Naive T": "Circulates through lymph nodes awaiting its first antigen to help other cells.",
        "CD4+/CD45RO+ Memory": "Responds quickly on re-exposure to an antigen by helping other immune cells.",
        "CD56+ NK": "Kills virus-infected and tumour cells without prior sensitisation.",
        "CD8+ Cytotoxic T": "Kills cells that display its antigen by releasing granzymes.",
        "CD8+/CD45RA+ Naive Cytotoxic": "Waits in lymphoid organs for the first antigen that will make it a killer.",
        "Dendritic": "Captures antigen in tissues and carries it to lymph nodes to activate T cells.",
    },
    "abbreviated": {
        "CD14+ Monocyte": "cMono (classical monocyte).",
        "CD19+ B": "B (B lymphocyte).",
        "CD34+": "HSPC (stem/progenitor).",
        "CD4+/CD25 T Reg": "Treg (regulatory CD4).",
        "CD4+/CD45RA+/CD25- Naive T": "CD4 Tn (naive helper).",
        "CD4+/CD45RO+ Memory": "CD4 Tm (memory helper).",
        "CD56+ NK": "NK (natural killer).",
        "CD8+ Cytotoxic T": "CD8 CTL (effector killer).",
        "CD8+/CD45RA+ Naive Cytotoxic": "CD8 Tn (naive killer).",
        "Dendritic": "DC (dendritic cell).",
    },
}
"""Five wordings of each pbmc68k cell type, one dict (cell type -> text) per vocabulary."""

DIAGNOSIS_WORDING_SETS: dict[str, dict[str, str]] = {
    "lay": {
        "control": "A healthy older person without brain disease.",
        "Alzheimer's disease": "A person with the memory-loss illness of old age.",
        "Parkinson's disease": "A person with the shaking illness that slows movement.",
        "frontotemporal dementia": "A person whose personality and language decline from frontal brain shrinkage.",
    },
    "textbook": {
        "control": "Cognitively normal participant with no neurodegenerative disorder.",
        "Alzheimer's disease": "Amyloid and tau neurodegenerative dementia of the medial temporal lobe.",
        "Parkinson's disease": "Synucleinopathy with nigrostriatal dopaminergic degeneration.",
        "frontotemporal dementia": "Frontotemporal lobar degeneration with behavioural or language variant.",
    },
    "abbreviated": {
        "control": "CN.",
        "Alzheimer's disease": "AD.",
        "Parkinson's disease": "PD.",
        "frontotemporal dementia": "FTD.",
    },
    "clinical": {
        "control": "Unremarkable neurological examination; no diagnosis.",
        "Alzheimer's disease": "Progressive amnestic cognitive impairment, probable dementia of the Alzheimer type.",
        "Parkinson's disease": "Bradykinesia with rest tremor and rigidity, idiopathic parkinsonism.",
        "frontotemporal dementia": "Disinhibition, apathy and aphasia, behavioural-variant FTLD.",
    },
    "findings": {
        "control": "Normal brain volume and unremarkable gene expression.",
        "Alzheimer's disease": "Hippocampal and temporoparietal atrophy with raised APOE and TREM2.",
        "Parkinson's disease": "Basal ganglia and brainstem changes with raised SNCA and LRRK2.",
        "frontotemporal dementia": "Frontal and anterior temporal atrophy with raised MAPT, GRN and C9orf72.",
    },
}
"""Five wordings of each synthetic diagnosis, one dict (diagnosis -> text) per vocabulary."""

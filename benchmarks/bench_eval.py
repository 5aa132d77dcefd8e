"""Multiple-choice scoring speed of the benchmark harness, as a ratio against a baseline run here.

``TextBackbone.loglikelihood`` (length-sorted batches, right padding without a mask, the LM head
on continuation positions only) vs the plain way: one pair at a time, ``model(input_ids).logits``
over every position, ``log_softmax``, sum the continuation's entries. Same prompts and options
(the shipped PubMedQA, MedQA and MedMCQA samples, chat format, on the default backbone). The
scores must agree before a ratio means anything: in float32 they match to 2e-5; in bf16 the
padded batches round differently (up to ~0.2 nats), so the script checks that the chosen option
is the same for at least 90% of the questions and prints the agreement (goal >= 2x).

Run: ``python benchmarks/bench_eval.py``. Prints one JSON line.
"""

from __future__ import annotations

from pathlib import Path

import torch
from common import best_of, emit

SAMPLES = Path(__file__).parents[1] / "examples" / "data" / "benchmarks"


def pairs(backbone) -> tuple[list[str], list[str], list[int]]:
    """Every (prompt, answer) pair of the samples' choice questions, and each pair's question."""
    from neuroomics_bridge.evaluation.scoring import answer_continuation, build_prompts
    from neuroomics_bridge.evaluation.tasks import TASKS, task_files

    contexts, continuations, questions = [], [], []
    question = 0
    for name in ("pubmedqa", "medqa", "medmcqa"):
        task = TASKS[name]
        examples = task.reader(task_files(SAMPLES, task)[0])
        for example, prompt in zip(examples, build_prompts(backbone, task, examples), strict=True):
            question += 1
            for answer in task.choices(example):
                contexts.append(prompt)
                continuations.append(answer_continuation(prompt, answer))
                questions.append(question)
    return contexts, continuations, questions


def choices(scores: torch.Tensor, questions: list[int]) -> list[int]:
    ids = torch.tensor(questions)
    return [int(scores[ids == q].argmax()) for q in sorted(set(questions))]


@torch.inference_mode()
def plain_loglikelihood(backbone, contexts: list[str], continuations: list[str]) -> torch.Tensor:
    scores = []
    for context, continuation in zip(contexts, continuations, strict=True):
        ctx = backbone.tokenize([context])[0]
        cont = backbone.tokenize([continuation], special_tokens=False)[0]
        logits = backbone.model(torch.tensor([ctx + cont])).logits[0].float().log_softmax(-1)
        scores.append(sum(float(logits[len(ctx) - 1 + j, token]) for j, token in enumerate(cont)))
    return torch.tensor(scores, dtype=torch.float64)


def main() -> None:
    from neuroomics_bridge import TextBackbone

    backbone = TextBackbone.from_pretrained("smollm2-135m-instruct")
    contexts, continuations, questions = pairs(backbone)
    backbone.loglikelihood(contexts[:8], continuations[:8])  # warm-up
    ours_s, (ours, _) = best_of(lambda: backbone.loglikelihood(contexts, continuations), warm_up=False)
    plain_s, plain = best_of(lambda: plain_loglikelihood(backbone, contexts, continuations), warm_up=False)
    picked, picked_plain = choices(ours, questions), choices(plain, questions)
    agreement = sum(a == b for a, b in zip(picked, picked_plain, strict=True)) / len(picked)
    if agreement < 0.9:
        raise SystemExit(
            f"only {agreement:.2f} of the chosen options agree: the ratio would not compare like with like"
        )
    emit(
        "mc_loglikelihood_vs_plain_forward", plain_s / ours_s,
        pairs=len(contexts), ours_s=round(ours_s, 3), plain_s=round(plain_s, 3),
        same_choice=round(agreement, 3), max_abs_diff=round(float((ours - plain).abs().max()), 5),
        dtype=str(backbone.dtype),
    )  # fmt: skip


if __name__ == "__main__":
    main()

"""Scoring a backbone on one benchmark task, the ways the field does.

- Choice tasks by **log-likelihood**: each option's answer (letter or label word) is scored as
  the continuation of the prompt and the likeliest wins, so no answer is lost to parsing
  (lm-eval's ``acc``; ``accuracy_norm`` divides by the answer's length in characters).
- Any task by **generation + parsing**: greedy answers, parsed by fixed rules; an answer that
  names no option counts as wrong (Meditron's rule), and the unparseable share is reported.
- **k-shot**: exemplars drawn from the task's train file, else from the evaluation items other
  than the one asked, seeded by ``(seed, item id)``, so an item gets the same exemplars whatever
  its batch or position; they are earlier user/assistant turns of the same chat.
- **Prompt format**: ``"chat"`` uses the backbone's template from its card (Me-LLaMA's
  ``Human:/Assistant:``, ChatML for SmolLM2, Question/Answer for base models); ``"plain"``
  prompts any model completion-style (:data:`~neuroomics_bridge.backbone.cards.COMPLETION_TEMPLATE`).
"""

from __future__ import annotations

import dataclasses
import re
import zlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from neuroomics_bridge.backbone.cards import COMPLETION_TEMPLATE
from neuroomics_bridge.errors import DataError
from neuroomics_bridge.evaluation.loaders import Example
from neuroomics_bridge.evaluation.metrics import (
    accuracy_stderr,
    entity_f1,
    macro_f1,
    multilabel_f1,
    normalize_answer,
    rouge_l,
)
from neuroomics_bridge.evaluation.tasks import LETTERS, BenchmarkTask, reference_answer, user_message

if TYPE_CHECKING:
    from neuroomics_bridge.backbone.text import TextBackbone

__all__ = [
    "TaskResult",
    "build_prompts",
    "shot_indices",
    "answer_continuation",
    "choose_by_loglikelihood",
    "parse_choice",
    "parse_entities",
    "parse_labels",
    "evaluate_task",
]

PromptFormat = Literal["chat", "plain"]
Mode = Literal["auto", "loglik", "generate"]
STOP = ("\n\n", "Question:", "Human:")  # a finished answer, or the model starting the next turn


@dataclasses.dataclass
class TaskResult:
    """Scores of one task, and every item's prediction for inspection.

    Attributes
    ----------
    task, family
        The task's name and family.
    mode
        How it was scored: ``"loglik"`` or ``"generate"``.
    shots, n
        Exemplars per prompt and items scored.
    metrics
        Metric name -> value (e.g. ``accuracy``, ``accuracy_stderr``, ``macro_f1``, ``f1``,
        ``rouge_l``, ``unparseable``).
    predictions
        One record per item: its ``id`` and ``reference``, the ``generated`` text or per-option
        ``logprobs``, and (except for summaries) the ``prediction``.
    """

    task: str
    family: str
    mode: str
    shots: int
    n: int
    metrics: dict[str, float]
    predictions: list[dict[str, Any]]


def shot_indices(pool_size: int, k: int, seed: int, item_id: str, *, skip: int | None = None) -> list[int]:
    """``k`` exemplar positions in a pool of ``pool_size``, drawn by a generator seeded with ``(seed, item id)``.

    An item thus gets the same exemplars whatever its batch or position.

    Parameters
    ----------
    skip
        A position never drawn (the item itself when the pool is the evaluation set).

    Raises
    ------
    DataError
        When the pool has fewer than ``k`` exemplars besides ``skip``.
    """
    available = pool_size - (skip is not None)
    if k > available:
        raise DataError(f"{k}-shot needs {k} exemplars besides the item; the pool has {available}")
    rng = np.random.default_rng([seed, zlib.crc32(item_id.encode())])
    drawn = rng.choice(pool_size, size=min(k + 1, pool_size), replace=False).tolist()
    return [i for i in drawn if i != skip][:k]


def build_prompts(
    backbone: TextBackbone,
    task: BenchmarkTask,
    examples: Sequence[Example],
    *,
    shots: int = 0,
    pool: Sequence[Example] | None = None,
    seed: int = 0,
    prompt_format: PromptFormat = "chat",
) -> list[str]:
    """One formatted prompt per example, ending where the answer begins.

    Parameters
    ----------
    backbone
        Its chat template formats the prompts.
    task, examples
        The task and the items to ask.
    shots, pool, seed
        ``shots`` exemplars per prompt from ``pool`` (default: ``examples``, never the item
        itself) as earlier user/assistant turns, drawn by :func:`shot_indices`.
    prompt_format
        ``"chat"``: the backbone's template; ``"plain"``: :data:`COMPLETION_TEMPLATE`.

    Raises
    ------
    DataError
        For another ``prompt_format``, or too small a pool.
    """
    if prompt_format not in ("chat", "plain"):
        raise DataError(f"prompt_format: expected 'chat' or 'plain', got {prompt_format!r}")
    template = COMPLETION_TEMPLATE if prompt_format == "plain" else None
    pool = examples if pool is None else pool
    position = {example.id: i for i, example in enumerate(pool)}
    prompts = []
    for example in examples:
        messages = []
        for i in shot_indices(len(pool), shots, seed, example.id, skip=position.get(example.id)) if shots else []:
            messages += [
                {"role": "user", "content": user_message(task, pool[i])},
                {"role": "assistant", "content": reference_answer(task, pool[i])},
            ]
        messages.append({"role": "user", "content": user_message(task, example)})
        prompts.append(backbone.chat(messages, template=template))
    return prompts


def answer_continuation(prompt: str, answer: str) -> str:
    """The answer as scored after ``prompt``: a space first unless the prompt ends in whitespace.

    The space is lm-eval's target delimiter; chat templates end their assistant header with a newline.
    """
    return answer if prompt[-1:].isspace() else " " + answer


def choose_by_loglikelihood(
    backbone: TextBackbone,
    task: BenchmarkTask,
    examples: Sequence[Example],
    prompts: Sequence[str],
) -> tuple[list[int], list[int], list[list[float]]]:
    """Pick each example's option by the log-likelihood of its answer after the prompt.

    Returns
    -------
    best : list of int
        Per example, the option whose answer is likeliest (lm-eval's ``acc``).
    best_norm : list of int
        The same per character of the answer (``acc_norm``).
    logprobs : list of list of float
        Every option's log-probability, per example.
    """
    contexts, continuations, spans = [], [], []
    for example, prompt in zip(examples, prompts, strict=True):
        start = len(continuations)
        for answer in task.choices(example):
            contexts.append(prompt)
            continuations.append(answer_continuation(prompt, answer))
        spans.append(slice(start, len(continuations)))
    logprob, _ = backbone.loglikelihood(contexts, continuations)
    scores = logprob.numpy()
    lengths = np.array([len(c) for c in continuations], dtype=np.float64)
    best = [int(scores[span].argmax()) for span in spans]
    best_norm = [int((scores[span] / lengths[span]).argmax()) for span in spans]
    return best, best_norm, [scores[span].tolist() for span in spans]


def parse_choice(task: BenchmarkTask, example: Example, text: str) -> int | None:
    """The option a generated answer names, or ``None`` (counted wrong).

    Lettered tasks: an answer that starts with an option's text, or with an article and then an
    option's text (the longest that fits; so ``E. coli``, ``A deficiency of folate`` and ``A viral
    encephalitis`` name their options, not the letters E and A), else a leading letter (``B``,
    ``(B)``, ``B.``) or ``answer is B`` / ``Answer: B`` / ``answer is: B``. Word tasks: the
    option word that occurs first, as a whole word.
    """
    answer = text.strip()
    if task.letters:
        valid = LETTERS[: len(example.options)]
        said = normalize_answer(answer)
        options = [normalize_answer(option) for option in example.options]
        by_length = sorted((i for i in range(len(options)) if options[i]), key=lambda i: -len(options[i]))
        for start in (said, re.sub(r"^(?:a|an|the)\s+", "", said)):
            named = next((i for i in by_length if start.startswith(options[i])), None)
            if named is not None:
                return named
        for pattern in (r"^\(?([A-H])\)?(?:[.):,\s]|$)", r"(?i:answer|option)\s*(?:is\s*:?|:)?\s*\(?([A-H])\b"):
            match = re.search(pattern, answer)
            if match and match.group(1) in valid:
                return valid.index(match.group(1))
        return None
    positions = {}
    for i, option in enumerate(example.options):
        match = re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", answer, flags=re.IGNORECASE)
        if match:
            positions[i] = match.start()
    return min(positions, key=positions.get) if positions else None


def _answer_lines(text: str) -> list[str]:
    lines = (re.sub(r"^\s*(?:[-*•]|\d+[.)])\s*", "", line).strip() for line in re.split(r"[\n;]", text))
    return [line for line in lines if line and normalize_answer(line) != "none"]


def parse_entities(task: BenchmarkTask, text: str) -> set[str]:
    """Entities of a generated answer as normalised ``"type: span"``, one per line or ``;``-separated.

    A line without a known type takes the task's type when it has only one, else it is dropped.
    """
    types = {normalize_answer(t) for t in task.labels}
    found = set()
    for line in _answer_lines(text):
        kind, _, span = line.partition(":")
        if span.strip() and normalize_answer(kind) in types:
            found.add(f"{normalize_answer(kind)}: {normalize_answer(span)}")
        elif len(types) == 1:
            found.add(f"{next(iter(types))}: {normalize_answer(line)}")
    return found


def parse_labels(task: BenchmarkTask, text: str) -> set[str]:
    """The task's labels named in a generated answer (one per line or comma-separated)."""
    known = {normalize_answer(label): label for label in task.labels}
    pieces = (piece for line in _answer_lines(text) for piece in line.split(","))
    return {known[normalize_answer(piece)] for piece in pieces if normalize_answer(piece) in known}


def _gold_entities(example: Example) -> set[str]:
    return {
        f"{normalize_answer(k)}: {normalize_answer(s)}" for k, _, s in (e.partition(":") for e in example.answer_set)
    }


def evaluate_task(
    backbone: TextBackbone,
    task: BenchmarkTask,
    examples: Sequence[Example],
    *,
    mode: Mode = "auto",
    shots: int = 0,
    pool: Sequence[Example] | None = None,
    seed: int = 0,
    prompt_format: PromptFormat = "chat",
    batch_size: int = 8,
) -> TaskResult:
    """Score ``backbone`` on ``examples`` of ``task``.

    Parameters
    ----------
    mode
        ``"auto"`` scores choice tasks by log-likelihood and the rest by generation;
        ``"generate"`` generates for every task; ``"loglik"`` is only for choice tasks.
    shots, pool, seed, prompt_format
        As in :func:`build_prompts`.
    batch_size
        Prompts per ``generate`` call.

    Raises
    ------
    DataError
        For an unknown ``mode``, ``"loglik"`` on a task without options, or as
        :func:`build_prompts` raises.
    """
    if mode not in ("auto", "loglik", "generate"):
        raise DataError(f"mode: expected 'auto', 'loglik' or 'generate', got {mode!r}")
    if mode == "loglik" and task.kind != "choice":
        raise DataError(f"{task.name}: log-likelihood scoring needs options, and its answers are {task.kind}")
    used = "loglik" if task.kind == "choice" and mode != "generate" else "generate"
    prompts = build_prompts(backbone, task, examples, shots=shots, pool=pool, seed=seed, prompt_format=prompt_format)
    if used == "loglik":
        metrics, predictions = _score_loglik(backbone, task, examples, prompts)
    else:
        answers = backbone.generate(prompts, max_new_tokens=task.max_new_tokens, batch_size=batch_size, stop=STOP)
        metrics, predictions = _score_generated(task, examples, answers)
    return TaskResult(task.name, task.family, used, shots, len(examples), metrics, predictions)


def _choice_metrics(task: BenchmarkTask, examples: Sequence[Example], picked: Sequence[int | None]) -> dict[str, float]:
    truth = [example.correct_option for example in examples]
    accuracy = float(np.mean([p == t for p, t in zip(picked, truth, strict=True)]))
    metrics = {"accuracy": accuracy, "accuracy_stderr": accuracy_stderr(accuracy, len(examples))}
    if not task.letters:  # fixed label vocabulary (NLI, DDI, PubMedQA): macro-F1 as Me-LLaMA reports
        guesses = [None if p is None else examples[0].options[p] for p in picked]
        metrics["macro_f1"] = macro_f1(guesses, [e.answer for e in examples], examples[0].options)
    return metrics


def _score_loglik(
    backbone: TextBackbone, task: BenchmarkTask, examples: Sequence[Example], prompts: Sequence[str]
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    best, best_norm, every = choose_by_loglikelihood(backbone, task, examples, prompts)
    metrics = _choice_metrics(task, examples, best)
    metrics["accuracy_norm"] = _choice_metrics(task, examples, best_norm)["accuracy"]
    predictions = [
        {"id": e.id, "prediction": e.options[b], "reference": e.answer, "correct": b == e.correct_option,
         "logprobs": dict(zip(task.choices(e), scores, strict=True))}
        for e, b, scores in zip(examples, best, every, strict=True)
    ]  # fmt: skip
    return metrics, predictions


def _score_generated(
    task: BenchmarkTask, examples: Sequence[Example], answers: Sequence[str]
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    predictions: list[dict[str, Any]] = [{"id": e.id, "generated": a} for e, a in zip(examples, answers, strict=True)]
    if task.kind == "choice":
        picked = [parse_choice(task, e, a) for e, a in zip(examples, answers, strict=True)]
        metrics = _choice_metrics(task, examples, picked)
        metrics["unparseable"] = float(np.mean([p is None for p in picked]))
        for record, example, p in zip(predictions, examples, picked, strict=True):
            chosen = None if p is None else example.options[p]
            record.update(prediction=chosen, reference=example.answer, correct=p == example.correct_option)
    elif task.kind == "entities":
        found = [parse_entities(task, a) for a in answers]
        gold = [_gold_entities(e) for e in examples]
        metrics = entity_f1(found, gold)
        for record, guess, truth in zip(predictions, found, gold, strict=True):
            record.update(prediction=sorted(guess), reference=sorted(truth))
    elif task.kind == "labels":
        found = [parse_labels(task, a) for a in answers]
        metrics = multilabel_f1(found, [e.answer_set for e in examples], task.labels)
        for record, guess, example in zip(predictions, found, examples, strict=True):
            record.update(prediction=sorted(guess), reference=sorted(example.answer_set))
    else:
        metrics = {"rouge_l": rouge_l(answers, [e.answer for e in examples])}
        for record, example in zip(predictions, examples, strict=True):
            record.update(reference=example.answer)
    return metrics, predictions

"""Medical benchmark harness: loaders, parsing, metrics, log-likelihood scoring, runs and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from neuroomics_bridge.errors import DataError, MissingFileError
from neuroomics_bridge.evaluation import (
    TASKS,
    BenchmarkRun,
    Example,
    compare_runs,
    entity_f1,
    evaluate_task,
    macro_f1,
    multilabel_f1,
    run_benchmarks,
)
from neuroomics_bridge.evaluation.harness import locate_benchmarks
from neuroomics_bridge.evaluation.loaders import read_medmcqa, read_ner
from neuroomics_bridge.evaluation.samples import write_benchmark_samples
from neuroomics_bridge.evaluation.scoring import (
    TaskResult,
    answer_continuation,
    build_prompts,
    parse_choice,
    parse_entities,
    parse_labels,
    shot_indices,
)
from neuroomics_bridge.evaluation.tasks import get_task, task_files
from neuroomics_bridge.notice import RESEARCH_NOTICE

SHIPPED = Path(__file__).parents[1] / "examples" / "data" / "benchmarks"


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_benchmark_samples(tmp_path_factory.mktemp("bench") / "benchmarks")


# ----------------------------------------------------------------------------------- loaders
def test_shipped_samples_are_what_the_generator_writes(samples: Path) -> None:
    assert sorted(p.name for p in SHIPPED.iterdir()) == sorted(p.name for p in samples.iterdir())
    for file in samples.iterdir():
        assert file.read_text() == (SHIPPED / file.name).read_text(), file.name


@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_task_reads_its_sample_file(samples: Path, name: str) -> None:
    task = TASKS[name]
    evaluation, pool = task_files(samples, task)
    assert evaluation.stem == name and pool is None
    examples = task.reader(evaluation)
    assert len(examples) >= 8 and len({e.id for e in examples}) == len(examples)
    for example in examples:
        if task.kind == "choice":
            assert example.answer in example.options
        elif task.kind == "text":
            assert example.answer and example.text
        else:  # a set may be empty (a sentence with no hallmark), never hold an empty item
            assert all(isinstance(item, str) and item for item in example.answer_set)
    if task.kind not in ("choice", "text"):
        assert any(example.answer_set for example in examples)


def test_loaders_map_the_published_encodings(samples: Path) -> None:
    medqa = json.loads((samples / "medqa.jsonl").read_text().splitlines()[0])
    first = TASKS["medqa"].reader(samples / "medqa.jsonl")[0]
    assert first.answer == medqa["options"][medqa["answer_idx"]] and len(first.options) == 5
    raw = json.loads((samples / "medmcqa.json").read_text().splitlines()[0])  # JSON lines in a .json file
    mcq = TASKS["medmcqa"].reader(samples / "medmcqa.json")[0]
    assert mcq.answer == raw["op" + "abcd"[raw["cop"] - 1]]  # original files count from 1
    bio = TASKS["bc5cdr"].reader(samples / "bc5cdr.tsv")[0]
    assert bio.text.startswith("Levodopa induced dyskinesia")
    assert set(bio.answer_set) == {"Chemical: Levodopa", "Disease: dyskinesia", "Disease: Parkinson's disease"}
    untyped = TASKS["ncbi-disease"].reader(samples / "ncbi-disease.tsv")[0]
    assert untyped.answer_set == ("Disease: Alzheimer's disease",)  # bare B/I tags take the task's type
    ddi = TASKS["ddi"].reader(samples / "ddi.tsv")
    assert [e.answer for e in ddi[-2:]] == ["none", "none"]  # DDI-false
    bionli = TASKS["bionli"].reader(samples / "bionli.jsonl")
    assert {e.answer for e in bionli} == {"entailment", "contradiction"}  # consistent / inconsistent
    hoc = TASKS["hoc"].reader(samples / "hoc.jsonl")
    assert any(len(e.answer_set) == 2 for e in hoc) and any(not e.answer_set for e in hoc)


def test_parquet_medmcqa_counts_from_zero_and_span_json_ner(tmp_path: Path) -> None:
    row = {"question": "Q?", "opa": "w", "opb": "x", "opc": "y", "opd": "z", "cop": 0}
    pd.DataFrame([row]).to_parquet(tmp_path / "medmcqa.parquet")
    assert read_medmcqa(tmp_path / "medmcqa.parquet")[0].answer == "w"
    line = {"text": "Lithium caused tremor.", "entities": [{"start": 0, "end": 7, "type": "Chemical"}]}
    (tmp_path / "spans.jsonl").write_text(json.dumps(line) + "\n")
    assert read_ner(tmp_path / "spans.jsonl", default_type="X")[0].answer_set == ("Chemical: Lithium",)


def test_two_options_of_one_text_are_told_apart_by_the_files_answer_index(tmp_path: Path) -> None:
    from neuroomics_bridge.evaluation.scoring import _score_generated
    from neuroomics_bridge.evaluation.tasks import reference_answer

    row = {"question": "Q?", "opa": "None", "opb": "x", "opc": "None", "opd": "z", "cop": 3}  # the second "None"
    (tmp_path / "medmcqa.jsonl").write_text(json.dumps(row) + "\n")
    (example,) = read_medmcqa(tmp_path / "medmcqa.jsonl")
    assert example.correct_option == 2 and reference_answer(TASKS["medmcqa"], example).startswith("C")
    for answer, right in (("C", True), ("A", False)):
        metrics, (record,) = _score_generated(TASKS["medmcqa"], [example], [answer])
        assert metrics["accuracy"] == float(right) and record["correct"] is right  # the metric and the record agree


def test_item_ids_do_not_depend_on_how_the_data_folder_is_spelled(tmp_path: Path, monkeypatch) -> None:
    rows = [{"question": f"Q{i}?", "options": {"A": "x", "B": "y"}, "answer_idx": "A"} for i in range(3)]
    (tmp_path / "medqa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.chdir(tmp_path.parent)
    relative = TASKS["medqa"].reader(Path(tmp_path.name) / "medqa.jsonl")
    absolute = TASKS["medqa"].reader((tmp_path / "medqa.jsonl").resolve())
    assert [e.id for e in relative] == [e.id for e in absolute] == ["medqa.jsonl:1", "medqa.jsonl:2", "medqa.jsonl:3"]


@pytest.mark.parametrize(
    ("name", "file", "content", "message"),
    [
        ("medqa", "medqa.jsonl", '{"question": "Q", "options": {"A": "x", "B": "y"}, "answer_idx": "C"}',
         r"medqa.jsonl:1: answer_idx 'C' is not one of the options \['A', 'B'\]"),
        ("medqa", "medqa.jsonl", '{"question": "Q"', r"medqa.jsonl:1: not valid JSON"),
        ("medmcqa", "medmcqa.json", '{"question": "Q", "opa": "a", "opb": "b", "opc": "c", "opd": "d", "cop": -1}',
         r"medmcqa.json:1: expected 'cop'.*test split has no answers"),
        ("mednli", "mednli.jsonl", '{"sentence1": "P", "sentence2": "H", "gold_label": "maybe"}',
         r"mednli.jsonl:1: gold_label 'maybe' is not one of \['contradiction', 'entailment', 'neutral'\]"),
        ("pubmedqa", "pubmedqa.json", '{"1": {"QUESTION": "Q", "CONTEXTS": ["c"]}}',
         r"pubmedqa.json\[1\]: expected 'final_decision'"),
        ("bc5cdr", "bc5cdr.tsv", "Lithium\tB-Chemical\ncaused\tX-Disease\n", r"bc5cdr.tsv:2: tag 'X-Disease'"),
        ("bc5cdr", "bc5cdr.tsv", "Lithium\tB\n", r"bc5cdr.tsv:1: untyped tag 'B', but this task has several entity"),
        ("bc5cdr", "bc5cdr.tsv", "Lithium\t\t\n", r"bc5cdr.tsv:1: (tag '' is not|expected 'token<TAB>tag')"),
        ("ddi", "ddi.tsv", "index\tsentence\tlabel\n0\t@DRUG$ and @DRUG$\tDDI-other\n",
         r"ddi.tsv:2: label 'DDI-other' is not one of"),
        ("hoc", "hoc.jsonl", '{"text": "t", "labels": ["cell death"]}', r"hoc.jsonl:1: label 'cell death'"),
        ("summarisation", "summarisation.jsonl", '{"document": "d"}',
         r"summarisation.jsonl:1: expected a text field 'summary' or .*the record has \['document'\]"),
        ("ncbi-disease", "ncbi-disease.json", '[{"text": "abc", "entities": [{"start": 1, "end": 9, "type": "D"}]}]',
         r"ncbi-disease.json\[0\]: entities\[0\] span 1:9 is outside the 3-character text"),
        ("medqa", "medqa.jsonl", json.dumps({"question": "Q", "options": {chr(65 + i): str(i) for i in range(10)},
         "answer_idx": "J"}), r"medqa.jsonl:1: at most 8 options \(A-H\), got 10"),
        ("medqa", "medqa.jsonl", json.dumps({"question": "Q", "options": {"A": "x", "B": " "}, "answer_idx": "A"}),
         r"medqa.jsonl:1: option\(s\) \['B'\] have no text"),  # "" would start every answer
        ("medqa", "medqa.jsonl", "\n".join([json.dumps({"id": "q1", "question": "Q", "options": {"A": "x", "B": "y"},
         "answer_idx": "A"})] * 2), r"medqa.jsonl: items 1 and 2 share the id 'q1'"),  # its own k-shot exemplar
    ],
)  # fmt: skip
def test_malformed_files_name_file_line_and_expectation(
    tmp_path: Path, name: str, file: str, content: str, message: str
) -> None:
    (tmp_path / file).write_text(content)
    task = get_task(name)
    with pytest.raises(DataError, match=message):
        task.reader(task_files(tmp_path, task)[0])


def test_missing_or_ambiguous_data_names_the_expected_layout(tmp_path: Path) -> None:
    with pytest.raises(MissingFileError, match=r"no data for 'medqa'; expected .*medqa.<ext> or .*medqa/test.<ext>"):
        task_files(tmp_path, TASKS["medqa"])
    (tmp_path / "medqa.jsonl").write_text("{}\n")
    (tmp_path / "medqa.json").write_text("{}\n")
    with pytest.raises(DataError, match="more than one file"):
        task_files(tmp_path, TASKS["medqa"])
    with pytest.raises(DataError, match="unknown benchmark task 'usmle'"):
        get_task("usmle")


# ----------------------------------------------------------------------------------- parsing
LETTERED = Example("q", "Which?", options=("levodopa", "riluzole", "donepezil", "lithium"), answer="riluzole")
WORDS = Example("p", "Is it?", options=("yes", "no", "maybe"), answer="no")


@pytest.mark.parametrize(
    ("text", "expected"),
    [("B", 1), ("(C) donepezil", 2), ("D. lithium", 3), ("The answer is A.", 0), ("Answer: b", None),
     ("riluzole, because it slows ALS", 1), ("E", None), ("I cannot tell.", None), ("", None)],
)  # fmt: skip
def test_letter_answers_parse_by_fixed_rules(text: str, expected: int | None) -> None:
    assert parse_choice(TASKS["medqa"], LETTERED, text) == expected


BACTERIA = Example("b", "Which?", options=("Salmonella", "Shigella", "E. coli", "Vibrio", "Listeria"), answer="E. coli")
FOLATE = Example("f", "Why?", options=("A deficiency of folate", "Iron", "Zinc", "Copper"), answer="Iron")


@pytest.mark.parametrize(
    ("example", "text", "expected"),
    [(BACTERIA, "E. coli", 2), (BACTERIA, "E", 4), (BACTERIA, "The answer is: B", 1),
     (FOLATE, "A deficiency of folate", 0), (FOLATE, "B. Iron", 1), (FOLATE, "A", 0),
     (LETTERED, "A donepezil-like drug", 2), (LETTERED, "The riluzole", 1), (LETTERED, "A is right", 0)],
)  # fmt: skip
def test_an_option_that_starts_like_a_letter_is_read_as_its_text(example: Example, text: str, expected: int) -> None:
    assert parse_choice(TASKS["medqa"], example, text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [("Yes.", 0), ("No, and maybe later", 1), ("It is maybe so; yes", 2), ("Not known", None), ("nonetheless", None)],
)
def test_word_answers_take_the_first_option_named(text: str, expected: int | None) -> None:
    assert parse_choice(TASKS["pubmedqa"], WORDS, text) == expected


def test_entities_and_labels_parse_from_lines() -> None:
    text = "- Chemical: Lithium\n* Disease: tremor.\nSymptom: ache\n1. disease: Tremor"
    assert parse_entities(TASKS["bc5cdr"], text) == {"chemical: lithium", "disease: tremor"}
    assert parse_entities(TASKS["ncbi-disease"], "Huntington disease\nnone") == {"disease: huntington disease"}
    assert parse_entities(TASKS["bc5cdr"], "none") == set()
    answer = "Inducing angiogenesis, resisting cell death\nsomething else"
    assert parse_labels(TASKS["hoc"], answer) == {"inducing angiogenesis", "resisting cell death"}


# ----------------------------------------------------------------------------------- metrics
def test_metrics_match_hand_computed_values() -> None:
    scores = entity_f1([{"a", "b", "c"}, set()], [{"a", "b"}, {"d"}])  # 2 hits, 3 found, 3 expected
    assert scores == pytest.approx({"precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3})
    # labels x, y: x predicted [1, 1, 0] vs true [1, 0, 0] -> F1 2/3; y predicted [0, 0, 1] vs [0, 1, 1] -> 2/3
    multi = multilabel_f1([{"x"}, {"x"}, {"y"}], [{"x"}, {"y"}, {"y"}], ["x", "y"])
    assert multi == pytest.approx({"macro_f1": 2 / 3, "micro_f1": 2 / 3})
    # yes: tp 1 fp 0 fn 1 -> 2/3; no: tp 1 fp 1 fn 0 -> 2/3; maybe: true once, never predicted -> 0
    assert macro_f1(["yes", None, "no", "no"], ["yes", "yes", "no", "maybe"], ["yes", "no", "maybe"]) == pytest.approx(
        (2 / 3 + 2 / 3 + 0) / 3
    )
    # a label neither true nor predicted (a subset, --limit) has no F1: a perfect run scores 1, not 2/3
    assert macro_f1(["yes", "no"], ["yes", "no"], ["yes", "no", "maybe"]) == 1.0
    assert multilabel_f1([{"x"}, set()], [{"x"}, set()], ["x", "y", "z"]) == {"macro_f1": 1.0, "micro_f1": 1.0}


# ----------------------------------------------------------------------------------- scoring
def test_shots_are_seeded_and_never_the_item() -> None:
    first = shot_indices(20, 4, 0, "item-3", skip=3)
    assert first == shot_indices(20, 4, 0, "item-3", skip=3) and 3 not in first and len(set(first)) == 4
    assert first != shot_indices(20, 4, 1, "item-3", skip=3) and first != shot_indices(20, 4, 0, "item-4", skip=3)
    assert sorted(shot_indices(3, 2, 0, "x", skip=1)) == [0, 2]
    with pytest.raises(DataError, match="needs 20 exemplars"):
        shot_indices(20, 20, 0, "item-3", skip=3)


def test_k_shot_prompts_are_earlier_chat_turns(tiny_backbone) -> None:
    task = TASKS["pubmedqa"]
    pool = [Example(str(i), f"Question {i}?", options=("yes", "no", "maybe"), answer="no") for i in range(5)]
    [prompt] = build_prompts(tiny_backbone, task, pool[:1], shots=2, pool=pool, prompt_format="plain")
    assert prompt.count("Question: Answer the biomedical") == 3 and prompt.count("Answer: no") == 2
    assert prompt.endswith("Answer:") and "Question 0?" in prompt.split("Answer: no")[-1]
    every = build_prompts(tiny_backbone, task, pool, shots=2, seed=7)
    assert build_prompts(tiny_backbone, task, pool[3:], shots=2, seed=7, pool=pool) == every[3:]  # position-free


def test_loglikelihood_equals_a_plain_forward_shared_context_or_not(tiny_backbone) -> None:
    contexts = ["The patient presents with", "The patient presents with", "MRI shows hippocampal", "No focal"]
    continuations = [" resting tremor", " bradykinesia", " atrophy consistent with it", " deficit"]
    scores, counts = tiny_backbone.loglikelihood(contexts, continuations)  # the first two share a forward pass
    alone = torch.cat([tiny_backbone.loglikelihood([c], [k])[0] for c, k in zip(contexts, continuations, strict=True)])
    torch.testing.assert_close(scores, alone, rtol=0, atol=1e-4)
    for i, (context, continuation) in enumerate(zip(contexts, continuations, strict=True)):
        ctx = tiny_backbone.tokenize([context])[0]
        cont = tiny_backbone.tokenize([continuation], special_tokens=False)[0]
        with torch.no_grad():
            logits = tiny_backbone.model(torch.tensor([ctx + cont])).logits[0].float().log_softmax(-1)
        expected = sum(float(logits[len(ctx) - 1 + j, token]) for j, token in enumerate(cont))
        assert counts[i] == len(cont) and float(scores[i]) == pytest.approx(expected, abs=1e-4)
    with pytest.raises(DataError, match=r"continuations\[0\] is empty"):
        tiny_backbone.loglikelihood(["x"], [""])


def _plant(backbone, task, examples, answers, steps: int = 300) -> None:
    """Teach ``backbone`` (in place) to answer each prompt with ``answers``: a short fine-tune with
    the loss on the answer only, as the scorer will read it."""
    texts = build_prompts(backbone, task, examples)
    prompts = [backbone.tokenize([text])[0] for text in texts]
    answers = [
        backbone.tokenize([answer_continuation(text, answer)], special_tokens=False)[0]
        for text, answer in zip(texts, answers, strict=True)
    ]
    ids = torch.tensor([p + a for p, a in zip(prompts, answers, strict=True)])  # equal lengths here
    labels = torch.tensor([[-100] * len(p) + a for p, a in zip(prompts, answers, strict=True)])
    optimizer = torch.optim.AdamW(backbone.model.parameters(), lr=1e-2)
    backbone.model.train()
    for _ in range(steps):
        loss = backbone.model(input_ids=ids, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    backbone.model.eval()


@pytest.mark.parametrize("planted", ["right", "wrong"])
def test_loglikelihood_scoring_picks_the_planted_answer(tiny_model_dir, planted: str) -> None:
    from neuroomics_bridge import TextBackbone

    torch.manual_seed(0)
    backbone = TextBackbone.from_pretrained(tiny_model_dir, dtype="float32", device="cpu")
    task = TASKS["medqa"]
    rng = np.random.default_rng(0)
    drugs = ["levodopa", "riluzole", "donepezil", "lithium"]
    examples = []
    for i in range(8):
        options = tuple(drugs[j] for j in rng.permutation(4))
        examples.append(Example(str(i), f"Drug {i}?", options=options, answer=options[int(rng.integers(4))]))
    shift = 0 if planted == "right" else 1  # "wrong": teach the option after the correct one
    letters = ["ABCD"[(e.options.index(e.answer) + shift) % 4] for e in examples]
    _plant(backbone, task, examples, letters)
    result = evaluate_task(backbone, task, examples, mode="loglik")
    assert result.mode == "loglik" and result.n == 8
    assert result.metrics["accuracy"] == (1.0 if planted == "right" else 0.0)
    assert all(
        max(p["logprobs"], key=p["logprobs"].get) == letter
        for p, letter in zip(result.predictions, letters, strict=True)
    )


def test_loglik_mode_refuses_tasks_without_options(tiny_backbone) -> None:
    with pytest.raises(DataError, match="bc5cdr: log-likelihood scoring needs options, and its answers are entities"):
        evaluate_task(tiny_backbone, TASKS["bc5cdr"], [Example("1", "x", answer_set=("Disease: x",))], mode="loglik")


# ----------------------------------------------------------------------------------- runs
def _run(task_metrics: dict[str, dict[str, float]], sha: str = "abc", shots: int = 0, right=None) -> BenchmarkRun:
    meta = {"backbone": "m", "adapter": None, "mode": "auto", "shots": shots, "seed": 0, "limit": None,
            "prompt_format": "chat", "data": {t: {"sha256": sha} for t in task_metrics}}  # fmt: skip
    predictions = [] if right is None else [{"id": str(i), "correct": ok} for i, ok in enumerate(right)]
    results = [TaskResult(t, get_task(t).family, "loglik", shots, 100, m, predictions) for t, m in task_metrics.items()]
    return BenchmarkRun(meta, results)


def test_comparison_tests_changes_and_flags_incomparable_rows() -> None:
    before = _run(
        {"medqa": {"accuracy": 0.30, "accuracy_stderr": 0.046}, "pubmedqa": {"accuracy": 0.5, "accuracy_stderr": 0.05}}
    )
    after = _run(
        {"medqa": {"accuracy": 0.50, "accuracy_stderr": 0.05}, "pubmedqa": {"accuracy": 0.52, "accuracy_stderr": 0.05}}
    )
    table = compare_runs(before, after)
    # z = 0.2 / hypot(0.046, 0.05) = 2.95 -> two-sided p = 0.00324; z = 0.02 / 0.0707 -> p = 0.777
    assert "| medqa | accuracy | 0.300 | 0.500 | +0.200 | p=0.00324 (standard errors) * |" in table
    assert "| pubmedqa | accuracy | 0.500 | 0.520 | +0.020 | p=0.777 (standard errors) |" in table
    other = compare_runs(before, _run({"medqa": {"accuracy": 0.3}}, sha="def", shots=3))
    assert "different data; shots differs" in other and "Only in one run: pubmedqa" in other


def test_comparison_pairs_items_with_mcnemar_when_predictions_are_there() -> None:
    a_right = [True] * 10 + [False] * 10
    b_right = [True] * 18 + [False] * 2  # B also right on 10..17: 0 only-A, 8 only-B -> p = 2 / 2**8
    table = compare_runs(
        _run({"medqa": {"accuracy": 0.5}}, right=a_right), _run({"medqa": {"accuracy": 0.9}}, right=b_right)
    )
    assert "McNemar p=0.00781 (0 only A right, 8 only B right) *" in table
    same = compare_runs(
        _run({"medqa": {"accuracy": 0.5}}, right=a_right), _run({"medqa": {"accuracy": 0.5}}, right=a_right)
    )
    assert "McNemar p=1 (0 only A right, 0 only B right) |" in same


def test_the_plot_leaves_the_plotting_backend_alone_and_a_failed_save_keeps_the_old_plot(tmp_path: Path) -> None:
    import matplotlib
    from matplotlib.figure import Figure

    from neuroomics_bridge.evaluation.harness import plot_runs

    runs = [_run({"medqa": {"accuracy": 0.3}}), _run({"medqa": {"accuracy": 0.5}}, sha="def")]
    before = matplotlib.get_backend()
    matplotlib.use("svg")  # e.g. a notebook's own backend: drawing a plot must not switch it
    try:
        path = plot_runs(runs, tmp_path / "runs.png")
        assert matplotlib.get_backend() == "svg"
    finally:
        matplotlib.use(before)
    good = path.read_bytes()
    assert good[:8] == b"\x89PNG\r\n\x1a\n"

    class FailingSave(Figure):
        def savefig(self, fname, **kwargs):
            Path(fname).write_bytes(b"half a PNG")
            raise OSError("disk full")

    from neuroomics_bridge.io import save_figure

    with pytest.raises(OSError, match="disk full"):
        save_figure(FailingSave(), path)
    assert path.read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs.png"]


def test_benchmark_files_that_are_not_utf8_or_not_tables_are_named(tmp_path: Path) -> None:
    from neuroomics_bridge.evaluation.loaders import read_records

    latin1 = "question,answer\nQu'est-ce qu'une d\xe9mence ?,yes\n".encode("latin-1")
    damaged = {
        "items.csv": (latin1, r"items\.csv: not a readable table \(UnicodeDecodeError"),
        "items.tsv": (b"a\tb\n1\t2\n3\t4\t5\t6\n", r"items\.tsv: not a readable table \(ParserError"),
        "items.json": (b'[{"question": "d\xe9mence"}]', r"items\.json: not UTF-8 text"),
        "items.jsonl": (b'{"question": "d\xe9mence"}\n', r"items\.jsonl: not UTF-8 text"),
    }
    for name, (content, message) in damaged.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(DataError, match=message):
            list(read_records(tmp_path / name))


def test_a_quote_in_a_tsv_is_text_and_a_byte_order_mark_is_not(tmp_path: Path) -> None:
    (tmp_path / "ddi.tsv").write_text(
        'index\tsentence\tlabel\n0\t"Strong inhibitors of @DRUG$ raise @DRUG$.\tDDI-mechanism\n'
        '1\t@DRUG$ and @DRUG$ were given.\tDDI-false\n2\tThe "so-called" @DRUG$ increases @DRUG$.\tDDI-effect\n'
    )  # TSVs are never quoted: the opening quote of row 0 must not swallow the rows after it
    items = get_task("ddi").reader(tmp_path / "ddi.tsv")
    assert [(e.text[:10], e.answer) for e in items] == [
        ('"Strong in', "mechanism"),
        ("@DRUG$ and", "none"),
        ('The "so-ca', "effect"),
    ]
    bio = "Levodopa\tB-Chemical\ninduced\tO\ndyskinesia\tB-Disease\n"
    (tmp_path / "bc5cdr.tsv").write_bytes(bio.encode("utf-8-sig"))
    (item,) = get_task("bc5cdr").reader(tmp_path / "bc5cdr.tsv")
    assert set(item.answer_set) == {"Chemical: Levodopa", "Disease: dyskinesia"}
    (tmp_path / "ncbi.tsv").write_bytes("Sj\xf6gren\tB\nsyndrome\tI\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"ncbi\.tsv: not UTF-8 text"):
        get_task("ncbi-disease").reader(tmp_path / "ncbi.tsv")


def test_run_saves_json_markdown_predictions_and_loads_back(tiny_backbone, samples: Path, tmp_path: Path) -> None:
    for bad in (0, -1):  # a slice would quietly drop items from the end
        with pytest.raises(DataError, match=f"limit: expected None or at least 1 item per task, got {bad}"):
            run_benchmarks(tiny_backbone, ["pubmedqa"], samples, limit=bad)
    run = run_benchmarks(tiny_backbone, ["pubmedqa", "ncbi-disease"], samples, limit=3, batch_size=4)
    path = run.save(tmp_path / "run.json")
    again = BenchmarkRun.load(path)
    assert again.to_json() == run.to_json()
    assert [r.predictions for r in again.results] == [r.predictions for r in run.results]
    assert (
        again.metadata["data"]["pubmedqa"]["n"] == 3 and again.metadata["weights_sha256"] == tiny_backbone.weights_hash
    )
    assert "research use only, not for clinical decision-making" in path.with_suffix(".md").read_text().lower()
    assert path.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    predictions = [json.loads(line) for line in path.with_suffix(".predictions.jsonl").read_text().splitlines()]
    assert [p["task"] for p in predictions] == ["pubmedqa"] * 3 + ["ncbi-disease"] * 3
    assert all(p["notice"] == RESEARCH_NOTICE for p in predictions)
    assert json.loads(path.read_text())["notice"] == RESEARCH_NOTICE
    with pytest.raises(DataError, match=r"must end in \.json"):
        run.save(tmp_path / "run.md")


def test_files_are_read_before_any_task_is_scored(samples: Path, tmp_path: Path) -> None:
    for name in ("pubmedqa", "medqa"):
        shipped = task_files(samples, get_task(name))[0]
        (tmp_path / shipped.name).write_text(shipped.read_text())
    size = len(get_task("medqa").reader(tmp_path / "medqa.jsonl"))
    with pytest.raises(DataError, match=rf"medqa\.jsonl: {size}-shot prompts need {size + 1} items .* has {size}"):
        locate_benchmarks(["pubmedqa", "medqa"], tmp_path, shots=size)  # before: after pubmedqa was scored
    spans = [{"text": "Parkinson disease", "entities": [{"start": 0, "end": 17, "type": "SpecificDisease"}]}]
    (tmp_path / "ncbi-disease.json").write_text(json.dumps(spans))
    with pytest.raises(
        DataError, match=r"item .* entity type\(s\) \['SpecificDisease'\]; ncbi-disease scores \['Disease'\]"
    ):
        locate_benchmarks(["ncbi-disease"], tmp_path)  # no answer could ever match it


def test_compare_refuses_to_replace_a_compared_run_and_names_an_incomplete_one(tmp_path: Path, capsys) -> None:
    from neuroomics_bridge.cli import main

    _run({"medqa": {"accuracy": 0.3}}).save(tmp_path / "a.json")
    _run({"medqa": {"accuracy": 0.5}}).save(tmp_path / "b.json")
    before = (tmp_path / "a.json").read_text()
    for out in ("a.json", "a.md", "b.predictions.jsonl"):
        assert main(["eval", "--compare", str(tmp_path / "a.json"), str(tmp_path / "b.json"),
                     "--out", str(tmp_path / out)]) == 2  # fmt: skip
        assert "a file of a compared run" in capsys.readouterr().err
    assert (tmp_path / "a.json").read_text() == before
    saved = json.loads(before)
    del saved["metadata"]["data"]
    (tmp_path / "c.json").write_text(json.dumps(saved))
    with pytest.raises(DataError, match=r"c\.json: not a results file written by nob eval \(KeyError: 'data'\)"):
        BenchmarkRun.load(tmp_path / "c.json")


# ----------------------------------------------------------------------------------- CLI
def test_cli_applies_a_lora_adapter_and_records_it(tiny_model_dir, samples: Path, tmp_path: Path) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from neuroomics_bridge.cli import main

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    adapter = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    adapter.save_pretrained(tmp_path / "adapter")
    common = ["eval", "--backbone", str(tiny_model_dir), "--tasks", "pubmedqa", "--data", str(samples), "--limit", "4",
              "--dtype", "float32"]  # fmt: skip
    assert main([*common, "--out", str(tmp_path / "base.json")]) == 0
    assert main([*common, "--lora", str(tmp_path / "adapter"), "--out", str(tmp_path / "lora.json")]) == 0
    base, tuned = BenchmarkRun.load(tmp_path / "base.json"), BenchmarkRun.load(tmp_path / "lora.json")
    assert base.metadata["adapter_sha256"] is None and len(tuned.metadata["adapter_sha256"]) == 64
    assert base.metadata["dtype"] == tuned.metadata["dtype"] == "float32"
    logprobs = [
        [json.loads(line)["logprobs"] for line in (tmp_path / f"{name}.predictions.jsonl").read_text().splitlines()]
        for name in ("base", "lora")
    ]
    assert logprobs[0] != logprobs[1]  # the adapter's random B matrices change the scores
    assert main(["eval", "--compare", str(tmp_path / "base.json"), str(tmp_path / "lora.json")]) == 0


@pytest.mark.slow
def test_nob_eval_end_to_end_on_the_default_backbone(samples: Path, tmp_path: Path) -> None:
    from tests.test_demo import nob  # offline: no socket can open

    out = tmp_path / "default.json"
    done = nob("eval", "--backbone", "smollm2-135m-instruct", "--data", str(samples), "--out", str(out),
               "--limit", "4", "--shots", "1", cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    run = BenchmarkRun.load(out)
    assert [r.task for r in run.results] == sorted(TASKS, key=list(TASKS).index)
    modes = {r.task: r.mode for r in run.results}
    assert modes["medqa"] == "loglik" and modes["bc5cdr"] == "generate" and modes["summarisation"] == "generate"
    assert all(0.0 <= r.metrics[get_task(r.task).primary] <= 1.0 and r.n == 4 for r in run.results)
    assert "| medqa | qa | loglik | 4 | accuracy |" in done.stdout
    compared = nob("eval", "--compare", str(out), str(out), "--out", str(tmp_path / "cmp.md"), cwd=tmp_path)
    assert compared.returncode == 0 and "| medqa | accuracy |" in (tmp_path / "cmp.md").read_text()
    assert (tmp_path / "cmp.png").is_file()


def test_prompts_follow_the_card_format_me_llama_or_plain(tiny_model_dir) -> None:
    from neuroomics_bridge import TextBackbone, get_card

    plain = TextBackbone.from_pretrained(tiny_model_dir, dtype="float32", device="cpu")
    me_llama = TextBackbone(plain.model, plain.tokenizer, name="me-llama-13b-chat", card=get_card("me-llama-13b-chat"))
    item = Example("1", "Is it?", options=("yes", "no", "maybe"), answer="yes")
    [chat] = build_prompts(me_llama, TASKS["pubmedqa"], [item])
    assert chat.startswith("Human: \nAnswer the biomedical") and chat.endswith("\n\nAssistant: \n")
    assert answer_continuation(chat, "yes") == "yes"  # the header ends the line: no leading space
    [completion] = build_prompts(me_llama, TASKS["pubmedqa"], [item], prompt_format="plain")
    assert completion.startswith("Question: Answer the biomedical") and completion.endswith("Answer:")
    assert answer_continuation(completion, "yes") == " yes"

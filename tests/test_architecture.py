"""Architecture rules the refactor promised, pinned so they cannot quietly erode.

* Imports inside the package go one way: no import circle, counting imports at module level,
  inside functions and under ``TYPE_CHECKING``.
* Each training default is defined once: the Python API, the Lightning modules and the
  LightningCLI recipes (and the shipped YAML, where it does not set a value) resolve the same
  hyper-parameters.
* Training hands the caller's backbone back as it came: its dtype (bf16 here) and its
  ``requires_grad`` flags, and the bridge adapters' flags.
* ``Cohort(...)`` never rewrites the caller's tables or dict.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import inspect
import itertools
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

PACKAGE_NAME = "neuroomics_bridge"
ROOT = Path(__file__).parents[1]
PACKAGE = ROOT / PACKAGE_NAME
CONFIGS = ROOT / "configs"
STAGES = ("contrastive", "prefix")
OPTIMIZER_KEYS = ("lr", "weight_decay", "warmup_fraction")  # what the recipes and fit_alignment can set


# ------------------------------------------------------------------------------ import graph
def _module_names() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package (a package is its __init__)."""
    modules = {}
    for file in sorted(PACKAGE.rglob("*.py")):
        parts = list(file.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = file
    return modules


def _ancestors(name: str) -> list[str]:
    """``a.b.c`` -> ``["a", "a.b"]``: the packages Python initialises before ``a.b.c``."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _resolve_relative(module: str, is_package: bool, level: int, target: str | None) -> str:
    """The absolute name of ``from <level dots><target> import ...`` written in ``module``."""
    package = module if is_package else module.rpartition(".")[0]
    for _ in range(level - 1):
        package = package.rpartition(".")[0]
    return f"{package}.{target}" if target else package


def _imported_names(module: str, file: Path, known: set[str]) -> Iterator[tuple[str, int]]:
    """(module of the package, line) for everything ``file`` imports, wherever the statement is."""
    is_package = file.name == "__init__.py"
    for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"), filename=str(file))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = _resolve_relative(module, is_package, node.level, node.module) if node.level else (node.module or "")
            yield base, node.lineno
            for alias in node.names:  # ``from pkg import submodule`` imports the submodule too
                if f"{base}.{alias.name}" in known:
                    yield f"{base}.{alias.name}", node.lineno


def _import_graph() -> tuple[dict[str, set[str]], dict[tuple[str, str], int]]:
    """Edges module -> modules it makes Python execute, with one line number per edge.

    Importing ``a.b.c`` executes ``a``, ``a.b`` and ``a.b.c``; the importer's own ancestor
    packages are left out (Python has initialised them before the importer runs).
    """
    modules = _module_names()
    known = set(modules)
    graph: dict[str, set[str]] = {name: set() for name in modules}
    lines: dict[tuple[str, str], int] = {}
    for module, file in modules.items():
        own = {*_ancestors(module), module}
        for name, line in _imported_names(module, file, known):
            if not (name == PACKAGE_NAME or name.startswith(f"{PACKAGE_NAME}.")):
                continue
            while name not in known:  # ``import pkg.mod.Name`` style, or a missing module: its package
                name = name.rpartition(".")[0]
            for target in [*_ancestors(name), name]:
                if target not in own:
                    graph[module].add(target)
                    lines.setdefault((module, target), line)
    return graph, lines


def _strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components (iterative), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(sorted(component))
    return components


def _a_cycle(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    """One concrete circle through the component's first module (breadth-first, so a short one)."""
    members, start = set(component), component[0]
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for child in sorted(graph[node] & members):
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [*reversed(path), start]
                if child not in previous:
                    previous[child] = node
                    following.append(child)
        frontier = following
    return component  # unreachable for a real component


def test_the_import_graph_walker_sees_every_kind_of_import() -> None:
    graph, _ = _import_graph()
    assert set(graph) >= {PACKAGE_NAME, f"{PACKAGE_NAME}.bridge", f"{PACKAGE_NAME}.bridge.model"}
    # Module level, ``from a.b import c``: the defining module and the packages on its way.
    assert {f"{PACKAGE_NAME}.adapters.config", f"{PACKAGE_NAME}.adapters"} <= graph[f"{PACKAGE_NAME}.config"]
    # Under TYPE_CHECKING (harness.py names TextBackbone for annotations only).
    assert f"{PACKAGE_NAME}.backbone.text" in graph[f"{PACKAGE_NAME}.evaluation.harness"]
    # Inside a function (alignment_data imports the cohort and the synthetic data there).
    assert f"{PACKAGE_NAME}.datasets" in graph[f"{PACKAGE_NAME}.training.recipes"]
    # An import of its own parent package does not count (bridge/model.py reads __version__).
    assert PACKAGE_NAME not in graph[f"{PACKAGE_NAME}.bridge.model"]
    assert _strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"], ["d"]]
    assert _a_cycle({"a": {"b"}, "b": {"c", "a"}, "c": {"a"}}, ["a", "b", "c"]) == ["a", "b", "a"]


def test_no_import_circle_inside_the_package() -> None:
    graph, lines = _import_graph()
    modules = _module_names()
    circles = []
    for component in _strongly_connected(graph):
        if len(component) == 1:
            continue
        cycle = _a_cycle(graph, component)
        steps = [
            f"{a} ({modules[a].relative_to(ROOT)}:{lines[(a, b)]}) imports {b}" for a, b in itertools.pairwise(cycle)
        ]
        circles.append(
            f"circle {' -> '.join(cycle)} (component of {len(component)}: {component}):\n  " + "\n  ".join(steps)
        )
    assert not circles, "\n".join(circles)


# ------------------------------------------------------------------------- defaults defined once
class _Captured(Exception):
    """Raised by a stubbed ``Trainer.fit`` / ``Trainer.validate``: the run was set up, nothing trained."""


@pytest.fixture
def capture_fit(monkeypatch) -> dict[str, Any]:
    """Stub out Lightning's ``fit`` and ``validate``: the first call records trainer, module and data."""
    from lightning.pytorch import Trainer

    seen: dict[str, Any] = {}

    def stop(self, model, *args, datamodule=None, **kwargs):
        seen.update(trainer=self, module=model, datamodule=datamodule)
        raise _Captured

    monkeypatch.setattr(Trainer, "fit", stop)
    monkeypatch.setattr(Trainer, "validate", stop)
    return seen


def _built_optimizer(module: Any, steps: int = 100) -> tuple[dict[str, Any], Any]:
    """The first parameter group of the AdamW the module configures, and its schedule."""
    module.trainer = SimpleNamespace(estimated_stepping_batches=steps, max_steps=steps)
    try:
        configured = module.configure_optimizers()
    finally:
        module._trainer = None
    optimizer, schedule = configured["optimizer"], configured["lr_scheduler"]["scheduler"]
    assert isinstance(optimizer, torch.optim.AdamW)
    return optimizer.param_groups[0], schedule


def _warmup_steps(schedule: Any, steps: int = 100) -> int:
    """Steps of the linear warm-up of a ``get_cosine_schedule_with_warmup`` schedule."""
    factor = schedule.lr_lambdas[0]
    return next(step for step in range(steps + 1) if factor(step) >= 1.0)


def _assert_optimizer_follows(module: Any, args: Any) -> None:
    """The module's AdamW (first group) and warm-up use exactly ``args`` (an ``OptimizerArgs``)."""
    group, schedule = _built_optimizer(module)
    assert group["initial_lr"] == pytest.approx(args.lr)  # "lr" itself is the schedule's, 0 at warm-up start
    assert tuple(group["betas"]) == tuple(args.betas), "betas"
    assert group["weight_decay"] == pytest.approx(args.weight_decay), "weight_decay"
    assert _warmup_steps(schedule) == int(args.warmup_fraction * 100), "warmup_fraction"


def _tiny_cohort(dims: dict[str, int], n: int = 24, seed: int = 0):
    """An already encoded cohort (random vectors), with reports and labels: no encoder to fit."""
    from neuroomics_bridge import Cohort

    rng = np.random.default_rng(seed)
    labels = ["control", "Parkinson's disease"] * (n // 2)
    reports = [f"Subject {i}: resting tremor and rigidity. Impression: {label}." for i, label in enumerate(labels)]
    return Cohort(
        subject_ids=[f"sub-{i:02d}" for i in range(n)],
        features={m: rng.normal(size=(n, d)).astype(np.float32) for m, d in dims.items()},
        reports=reports,
        labels=labels,
    )


@pytest.mark.parametrize("stage", STAGES)
def test_python_api_resolves_each_stages_defaults_from_training_args(
    stage, make_bridge, tiny_model_dir, capture_fit, tmp_path
) -> None:
    from neuroomics_bridge import AlignmentModule, BackboneConfig, fit_alignment
    from neuroomics_bridge.training.args import stage_args
    from neuroomics_bridge.training.recipes import alignment_model

    defaults = stage_args(stage)
    dims = {"gene": 6, "brain": 4}
    direct = AlignmentModule(make_bridge(dims), stage=stage)
    assert direct.optimizer_args == defaults.optimizer
    _assert_optimizer_follows(direct, defaults.optimizer)
    recipe = alignment_model(
        backbone=BackboneConfig(name=str(tiny_model_dir), dtype="float32", device="cpu"),
        stage=stage,
        modality_dims=dims,
    )
    assert recipe.stage == stage and recipe.optimizer_args == defaults.optimizer
    with pytest.raises(_Captured):
        fit_alignment(make_bridge(dims), _tiny_cohort(dims), stage, root_dir=tmp_path)
    fitted = capture_fit["module"]
    assert fitted.stage == stage and fitted.optimizer_args == defaults.optimizer
    _assert_optimizer_follows(fitted, defaults.optimizer)
    assert capture_fit["datamodule"].batch_size == defaults.batch_size
    assert capture_fit["trainer"].max_epochs == defaults.max_epochs


def test_explicit_optimizer_arguments_win_over_the_stage_defaults(make_bridge, tiny_model_dir) -> None:
    from neuroomics_bridge import AlignmentModule, BackboneConfig
    from neuroomics_bridge.training.args import stage_args
    from neuroomics_bridge.training.recipes import alignment_model

    given = {"lr": 0.123, "weight_decay": 0.0, "warmup_fraction": 0.2}  # an explicit 0 counts
    expected = dataclasses.replace(stage_args("prefix").optimizer, **given)
    assert AlignmentModule(make_bridge(), stage="prefix", **given).optimizer_args == expected
    recipe = alignment_model(
        backbone=BackboneConfig(name=str(tiny_model_dir), dtype="float32", device="cpu"),
        stage="prefix",
        modality_dims={"gene": 6},
        **given,
    )
    assert recipe.optimizer_args == expected


@pytest.fixture(scope="module", params=STAGES)
def cli_without_config(request, tiny_model_dir):
    """``nob align`` built from the command line alone (no YAML): every default is the library's."""
    from neuroomics_bridge.training.recipes import AlignmentCLI

    args = ["--model.backbone.name", str(tiny_model_dir), "--model.stage", request.param]
    args += ["--data.synthetic_subjects", "40", "--data.gene_components", "4", "--data.brain_components", "4"]
    return request.param, AlignmentCLI(args, run=False)


def test_cli_recipe_resolves_the_same_optimizer_and_batch_size_as_the_python_api(cli_without_config) -> None:
    from neuroomics_bridge.training.args import stage_args

    stage, cli = cli_without_config
    defaults = stage_args(stage)
    assert cli.model.stage == stage
    assert cli.model.optimizer_args == defaults.optimizer
    assert cli.datamodule.batch_size == defaults.batch_size  # model.stage is linked into the data's default


def test_cli_recipe_trains_each_stage_for_the_same_epochs_as_the_python_api(cli_without_config) -> None:
    from neuroomics_bridge.training.args import stage_args

    stage, cli = cli_without_config
    assert cli.trainer.max_epochs == stage_args(stage).max_epochs, (
        f"nob align ({stage}) without trainer.max_epochs gets max_epochs={cli.trainer.max_epochs} (None: "
        f"Lightning's 1000); fit_alignment trains {stage_args(stage).max_epochs}"
    )


def test_shipped_alignment_yaml_gives_the_python_api_hyper_parameters_unless_it_sets_them(
    tmp_path, tiny_model_dir
) -> None:
    from neuroomics_bridge.training.args import stage_args
    from neuroomics_bridge.training.recipes import AlignmentCLI

    small = ["--data.synthetic_subjects", "40", "--model.backbone.name", str(tiny_model_dir)]
    shipped = sorted(CONFIGS.glob("align_*.yaml"), key=lambda p: p.name != "align_contrastive.yaml")
    assert [p.name for p in shipped] == ["align_contrastive.yaml", "align_prefix.yaml"]
    saved = None
    for path in shipped:  # contrastive first: its saved bridge is what the prefix recipe starts from
        recipe = yaml.safe_load(path.read_text())
        stage = recipe["model"]["stage"]
        defaults = stage_args(stage)
        extra = ["--model.init_from", str(saved)] if recipe["model"].get("init_from") else []
        cli = AlignmentCLI(["--config", str(path), *small, *extra], run=False)
        set_here = {k: recipe["model"][k] for k in OPTIMIZER_KEYS if recipe["model"].get(k) is not None}
        assert cli.model.optimizer_args == dataclasses.replace(defaults.optimizer, **set_here), path.name
        assert cli.datamodule.batch_size == recipe["data"].get("batch_size", defaults.batch_size), path.name
        assert cli.trainer.max_epochs == recipe["trainer"].get("max_epochs", defaults.max_epochs), path.name
        saved = cli.model.bridge.save_pretrained(tmp_path / "bridge")


def _defaults(function: Callable[..., Any]) -> dict[str, Any]:
    return {name: p.default for name, p in inspect.signature(function).parameters.items() if p.default is not p.empty}


@pytest.mark.parametrize("kind", ["pretrain", "instruct"])
def test_pretrain_and_instruct_defaults_are_the_training_args_constants(kind: str) -> None:
    from neuroomics_bridge.training import args, recipes
    from neuroomics_bridge.training.instruct import InstructionTuneModule, instruction_tune
    from neuroomics_bridge.training.pretrain import ContinualPretrainModule, continual_pretrain

    constant, recipe, module, function = {
        "pretrain": (args.PRETRAIN_OPTIMIZER, recipes.pretrain_model, ContinualPretrainModule, continual_pretrain),
        "instruct": (args.INSTRUCT_OPTIMIZER, recipes.instruct_model, InstructionTuneModule, instruction_tune),
    }[kind]
    expected = dataclasses.asdict(constant)
    assert _defaults(function)["optimizer"] is constant
    module_defaults, recipe_defaults = _defaults(module.__init__), _defaults(recipe)
    for key in OPTIMIZER_KEYS:  # what the recipes expose; the modules also betas, where they take it
        assert module_defaults[key] == expected[key], f"{module.__name__}({key}=...)"
        assert recipe_defaults[key] == expected[key], f"{recipe.__name__}({key}=...)"
    if "betas" in module_defaults:
        assert tuple(module_defaults["betas"]) == tuple(expected["betas"]), f"{module.__name__}(betas=...)"
    # What the API's ``optimizer`` can set, the module takes: no field of OptimizerArgs is dropped.
    dropped = set(expected) - set(inspect.signature(module.__init__).parameters)
    assert not dropped, f"{module.__name__} takes no {sorted(dropped)}: OptimizerArgs fields it ignores"


def _corpora() -> dict[str, list[str]]:
    clinical = [f"Patient {i} presents with resting tremor. MRI shows striatal volume loss." for i in range(40)]
    general = [f"The train left the station at {i} o'clock and the rain fell." for i in range(40)]
    return {"clinical": clinical, "general": general}


def _instruction_records() -> list[Any]:
    from neuroomics_bridge.data.instructions import InstructionRecord

    record = InstructionRecord("classification", "Diagnosis?", "Resting tremor and rigidity.", "Parkinson's disease")
    return [record] * 4


@pytest.mark.parametrize("given", [None, "custom"], ids=["defaults", "custom"])
def test_pretrain_and_instruct_optimizers_follow_their_optimizer_args(
    given, tiny_model_dir, capture_fit, tmp_path
) -> None:
    from neuroomics_bridge import TextBackbone
    from neuroomics_bridge.training.args import INSTRUCT_OPTIMIZER, PRETRAIN_OPTIMIZER, OptimizerArgs
    from neuroomics_bridge.training.instruct import instruction_tune
    from neuroomics_bridge.training.pretrain import continual_pretrain

    custom = OptimizerArgs(lr=0.0123, weight_decay=0.0345, betas=(0.81, 0.92), warmup_fraction=0.2)
    runs = {
        "continual_pretrain": (
            continual_pretrain,
            PRETRAIN_OPTIMIZER,
            (_corpora(), {"clinical": 1, "general": 1}),
            {"max_steps": 2},
        ),
        "instruction_tune": (instruction_tune, INSTRUCT_OPTIMIZER, (_instruction_records(),), {}),
    }
    failures = []
    for name, (function, default, inputs, options) in runs.items():
        backbone = TextBackbone.from_pretrained(tiny_model_dir, dtype="float32", device="cpu")
        if given is not None:
            options = {**options, "optimizer": custom}
        with pytest.raises(_Captured):
            function(backbone, *inputs, root_dir=tmp_path / name, **options)
        try:  # ContinualPretrainModule's first group is its weight-decayed one
            _assert_optimizer_follows(capture_fit["module"], default if given is None else custom)
        except AssertionError as err:
            failures.append(f"{name}: {err}")
    assert not failures, failures


# ------------------------------------------------------------------- the caller's backbone, as it came
def _flags_and_dtypes(model: torch.nn.Module) -> dict[str, tuple[torch.dtype, bool]]:
    """Per original parameter: dtype and requires_grad. peft's ``base_layer`` wrapping is seen
    through (the parameter it wraps is the original one); added LoRA weights are left out."""
    return {
        name.replace(".base_layer", ""): (p.dtype, p.requires_grad)
        for name, p in model.named_parameters()
        if "lora_" not in name
    }


@pytest.fixture
def bf16_backbone(tiny_model_dir):
    """The tiny LLaMA in bfloat16 with a caller's own mix of flags: embeddings and layer 1's
    attention frozen, every other weight trainable."""
    from neuroomics_bridge import TextBackbone

    backbone = TextBackbone.from_pretrained(tiny_model_dir, dtype="bfloat16", device="cpu")
    for name, parameter in backbone.model.named_parameters():
        parameter.requires_grad_(not ("embed_tokens" in name or "layers.1.self_attn" in name))
    before = _flags_and_dtypes(backbone.model)
    assert {dtype for dtype, _ in before.values()} == {torch.bfloat16}
    assert {flag for _, flag in before.values()} == {True, False}
    return backbone


def _assert_as_it_came(backbone, before: dict[str, tuple[torch.dtype, bool]], after_what: str) -> None:
    after = _flags_and_dtypes(backbone.model)
    assert after.keys() == before.keys(), after_what
    changed = {name: (before[name], after[name]) for name in before if after[name] != before[name]}
    assert not changed, f"after {after_what}, (dtype, requires_grad) changed: {changed}"
    assert backbone.dtype == torch.bfloat16, after_what


@pytest.mark.parametrize("with_lora", [False, True], ids=["prefix", "prefix+lora"])
def test_fit_alignment_hands_back_a_bf16_backbone_and_the_adapters_as_they_came(
    with_lora, bf16_backbone, make_bridge, tmp_path
) -> None:
    from neuroomics_bridge import LoRAConfig, fit_alignment

    dims = {"gene": 6, "brain": 4}
    bridge = make_bridge(dims, backbone=bf16_backbone)
    for name, parameter in bridge.adapters.named_parameters():  # the caller's own mix on the adapters too
        parameter.requires_grad_(name.startswith("heads.gene") or name.startswith("projector.expand.brain"))
    adapters_before = {n: (p.dtype, p.requires_grad) for n, p in bridge.adapters.named_parameters()}
    assert {flag for _, flag in adapters_before.values()} == {True, False}
    before = _flags_and_dtypes(bf16_backbone.model)
    projector = {k: v.clone() for k, v in bridge.adapters.state_dict().items() if k.startswith("projector.")}
    fit_alignment(
        bridge, _tiny_cohort(dims), "prefix", max_epochs=1, batch_size=8, root_dir=tmp_path,
        precision="bf16-mixed", enable_progress_bar=False, lora=LoRAConfig(r=2, alpha=4) if with_lora else None,
    )  # fmt: skip
    assert any(not torch.equal(v, bridge.adapters.state_dict()[k]) for k, v in projector.items())  # it trained
    assert bool(bridge.lora_state()) == with_lora
    _assert_as_it_came(bf16_backbone, before, "fit_alignment (prefix, with LoRA)" if with_lora else "fit_alignment")
    adapters_after = {n: (p.dtype, p.requires_grad) for n, p in bridge.adapters.named_parameters()}
    assert adapters_after == adapters_before


def test_continual_pretrain_hands_back_a_bf16_backbone_as_it_came(bf16_backbone, tmp_path) -> None:
    from neuroomics_bridge.training.pretrain import continual_pretrain

    before = _flags_and_dtypes(bf16_backbone.model)
    weights = {n: p.detach().clone() for n, p in bf16_backbone.model.named_parameters()}
    continual_pretrain(
        bf16_backbone, _corpora(), {"clinical": 1, "general": 1}, max_steps=2, block_size=32, batch_size=2,
        heldout_fraction=0.2, root_dir=tmp_path, enable_progress_bar=False, precision="bf16-mixed",
    )  # fmt: skip
    trained = [n for n, p in bf16_backbone.model.named_parameters() if not torch.equal(p.detach(), weights[n])]
    assert trained and all(before[n][1] for n in trained)  # it trained, and only what the caller left trainable
    _assert_as_it_came(bf16_backbone, before, "continual_pretrain")


def test_instruction_tune_hands_back_a_bf16_backbone_as_it_came(bf16_backbone, tmp_path) -> None:
    from neuroomics_bridge.training.instruct import instruction_tune

    before = _flags_and_dtypes(bf16_backbone.model)
    module = instruction_tune(
        bf16_backbone, _instruction_records(), max_epochs=1, batch_size=2, root_dir=tmp_path,
        enable_progress_bar=False, precision="bf16-mixed",
    )  # fmt: skip
    assert any("lora_" in n for n, _ in module.model.named_parameters())  # peft's adapters went in
    _assert_as_it_came(bf16_backbone, before, "instruction_tune")


def test_an_interrupted_fit_hands_back_a_bf16_backbone_as_it_came(bf16_backbone, make_bridge, tmp_path) -> None:
    from lightning.pytorch.callbacks import Callback

    from neuroomics_bridge import fit_alignment
    from neuroomics_bridge.training.instruct import instruction_tune

    class CtrlC(Callback):
        def on_train_batch_start(self, *args) -> None:
            raise KeyboardInterrupt

    before = _flags_and_dtypes(bf16_backbone.model)
    bridge = make_bridge({"gene": 6, "brain": 4}, backbone=bf16_backbone)
    runs = {
        "instruction_tune": lambda: instruction_tune(
            bf16_backbone, _instruction_records(), max_epochs=1, batch_size=2, root_dir=tmp_path / "i",
            enable_progress_bar=False, precision="bf16-mixed", callbacks=[CtrlC()],
        ),
        "fit_alignment": lambda: fit_alignment(
            bridge, _tiny_cohort({"gene": 6, "brain": 4}), "prefix", max_epochs=1, batch_size=8,
            root_dir=tmp_path / "a", precision="bf16-mixed", enable_progress_bar=False, callbacks=[CtrlC()],
        ),
    }  # fmt: skip
    for name, run in runs.items():
        with contextlib.suppress(KeyboardInterrupt, SystemExit):  # Lightning turns a Ctrl-C into an exit
            run()
        _assert_as_it_came(bf16_backbone, before, f"an interrupted {name}")


# ----------------------------------------------------------------------------- Cohort copies
def test_cohort_never_rewrites_the_callers_tables_or_dict() -> None:
    from neuroomics_bridge import Cohort

    n = 4
    covariates = pd.DataFrame({"age": [61.0, 70.0, 55.0, 68.0], "site": ["a", "b", "a", "b"]})  # a RangeIndex
    phenotypes = pd.DataFrame({"severity": [0.1, 0.5, 0.2, 0.9]}, index=list(range(n)))
    gene = np.arange(n * 3, dtype=np.float64).reshape(n, 3)
    brain = np.ones((n, 2), dtype=np.float32)
    features = {"gene": gene, "brain": brain}
    snapshot = {
        "covariates": covariates.copy(deep=True),
        "phenotypes": phenotypes.copy(deep=True),
        "features": {k: v.copy() for k, v in features.items()},
    }
    cohort = Cohort(subject_ids=list(range(n)), features=features, covariates=covariates, phenotypes=phenotypes)
    assert cohort.subject_ids == ["0", "1", "2", "3"]
    assert list(cohort.covariates.index) == cohort.subject_ids and cohort.covariates.index.name == "subject_id"
    # The caller's frames keep their own index (type, values, name) and values.
    assert isinstance(covariates.index, pd.RangeIndex) and covariates.index.name is None
    pd.testing.assert_frame_equal(covariates, snapshot["covariates"], check_index_type=True)
    pd.testing.assert_frame_equal(phenotypes, snapshot["phenotypes"], check_index_type=True)
    # The caller's dict keeps its keys and its very arrays, unconverted.
    assert list(features) == ["gene", "brain"] and features["gene"] is gene and features["brain"] is brain
    assert gene.dtype == np.float64 and brain.dtype == np.float32
    for key, value in snapshot["features"].items():
        np.testing.assert_array_equal(features[key], value)
    assert cohort.features is not features and cohort.features["gene"].dtype == np.float32


def test_writing_to_a_cohorts_matrices_does_not_reach_the_callers_arrays() -> None:
    from neuroomics_bridge import Cohort

    brain = np.ones((3, 2), dtype=np.float32)  # already float32: the kind np.asarray hands back uncopied
    features = {"brain": brain}
    cohort = Cohort(subject_ids=["0", "1", "2"], features=features)
    cohort.features["brain"][0] = np.nan  # marking a subject absent, in place
    cohort.features["extra"] = np.zeros((3, 1), dtype=np.float32)
    assert list(features) == ["brain"]
    assert np.isfinite(brain).all(), "a write to cohort.features reached the caller's array"


def test_writing_to_a_cohorts_tables_does_not_reach_the_callers_frames() -> None:
    from neuroomics_bridge import Cohort

    covariates = pd.DataFrame({"age": [61.0, 70.0, 55.0]})
    cohort = Cohort(subject_ids=["0", "1", "2"], covariates=covariates)
    cohort.covariates.loc["0", "age"] = 99.0
    cohort.covariates["age"] *= 2
    assert covariates["age"].tolist() == [61.0, 70.0, 55.0], "a write to cohort.covariates reached the caller's frame"


@pytest.mark.parametrize("settings_name", ["FULL", "QUICK"])
def test_the_demo_trains_each_stage_for_the_library_default_unless_it_names_epochs(
    settings_name, monkeypatch, tmp_path
) -> None:
    import neuroomics_bridge.training as training
    from neuroomics_bridge import demo
    from neuroomics_bridge.training.args import stage_args

    epochs: dict[str, int] = {}
    monkeypatch.setattr(training, "fit_alignment", lambda *a, max_epochs, **k: epochs.setdefault(a[2], max_epochs))
    settings = getattr(demo, settings_name)
    steps: list[str] = []
    demo._fit_both_stages(None, None, None, settings, tmp_path, steps.append, compile_training=False)
    for stage in ("contrastive", "prefix"):
        named = getattr(settings, f"{stage}_epochs")
        assert epochs[stage] == settings.epochs(stage) == (stage_args(stage).max_epochs if named is None else named)
        assert any(f"{stage} stage ({epochs[stage]} epoch" in line for line in steps), steps
    assert demo.FULL.prefix_epochs is None  # the full demo is the library's recipe, not a shortened one

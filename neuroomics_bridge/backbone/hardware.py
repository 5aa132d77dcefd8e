"""Pick the device and the fastest numerically safe dtype for this machine.

bf16 halves memory traffic and, on CPUs with native bf16 instructions (AVX512-BF16, AMX,
Arm BF16), runs matmuls about twice as fast as float32; on CPUs without them PyTorch emulates
bf16 and it is slower than float32, so the choice depends on the instruction set.
"""

from __future__ import annotations

import contextlib
import functools
import platform
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from neuroomics_bridge.backbone.packed import PACKABLE_DTYPES, PackedLinear, stack_siblings

__all__ = [
    "default_device",
    "default_dtype",
    "timed_cpu_dtype",
    "cpu_has_native_bf16",
    "resolve_dtype",
    "route_single_row_matmuls_to_aten",
    "single_row_kernel",
    "available_memory",
    "cgroup_memory_headroom",
]

_BF16_CPU_FLAGS = {"avx512_bf16", "amx_bf16", "bf16"}
BLOCK_ROWS = 64
"""Token rows of the many-row workload the dtype is timed on (a prompt's prefill, an encoding batch)."""
TIMED_FLOAT32_BYTES = 2**30
"""The float32 weight bytes of the layers the dtype is timed on: past any L3, so rows stream weights."""
_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def default_device() -> torch.device:
    """CUDA when available, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU executes bf16 arithmetic in hardware."""
    system = platform.system()
    if system == "Linux":
        cpuinfo = Path("/proc/cpuinfo")
        if not cpuinfo.exists():
            return False
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("flags", "Features"):
                return bool(_BF16_CPU_FLAGS & set(value.split()))
        return False
    if system == "Darwin":
        probe = subprocess.run(
            ["sysctl", "-n", "hw.optional.arm.FEAT_BF16"], capture_output=True, text=True, check=False
        )
        return probe.stdout.strip() == "1"
    return False


def default_dtype(device: torch.device, *, preferred: torch.dtype = torch.bfloat16) -> torch.dtype:
    """The dtype a model should run in on ``device``.

    On CPU: bf16 with native support, float32 otherwise (CPU float16 matmuls are emulated and
    slow); float32 on any other device type.

    Parameters
    ----------
    device
        Where the model runs.
    preferred
        The half type the weights were released in (the card's ``dtype``); GPUs use it, falling
        back to float16 where bf16 is unsupported.
    """
    if device.type == "cuda":
        half = preferred if preferred in (torch.bfloat16, torch.float16) else torch.bfloat16
        if half == torch.bfloat16 and not torch.cuda.is_bf16_supported():
            return torch.float16
        return half
    if device.type == "cpu":
        return torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    return torch.float32


def timed_cpu_dtype(linear_shapes: Sequence[tuple[int, int]]) -> torch.dtype:
    """bf16 or float32 for a model with these linear layers on this CPU, whichever times faster.

    A CPU's flags say whether bf16 runs in hardware, not whether it is faster there: on the Intel
    Xeon with AMX bf16 decoding was no faster than plain float32's (README, "Performance"). So
    where the flags allow bf16 both dtypes are timed on random weights of the model's shapes, for
    two workloads separately: one decoding step (one token row through every layer, bf16 on
    ATen's single-row kernel) and a block of :data:`BLOCK_ROWS` rows (prefill, encoding, a
    training batch). float32 is chosen only where it is faster on both, since bf16 also halves
    the weights' memory. Once per CPU, library versions and shapes, then cached
    (:func:`~neuroomics_bridge.backbone.calibration.calibrated_choice`).

    Parameters
    ----------
    linear_shapes
        ``(in_features, out_features)`` of the model's linear layers in the order they run. Only
        the first layers up to :data:`TIMED_FLOAT32_BYTES` of float32 weights are timed (at
        least one).

    Returns
    -------
    torch.dtype
        float32 without native bf16 (untimed: emulated bf16 is several times slower); bf16,
        untimed, where the timed layers in both dtypes would take over half the available memory;
        else the timed choice.
    """
    from neuroomics_bridge.backbone.calibration import calibrated_choice, random_rows, run_rows

    if not cpu_has_native_bf16():
        return torch.float32
    timed, total = [], 0
    for shape in linear_shapes:
        total += 4 * shape[0] * shape[1]
        if timed and total > TIMED_FLOAT32_BYTES:
            break
        timed.append(shape)
    if not timed or 2 * 6 * sum(i * o for i, o in timed) > available_memory():  # fp32 + bf16 bytes, twice
        return torch.bfloat16

    @functools.cache
    def layers(dtype: torch.dtype) -> list[torch.nn.Linear]:  # made at the warm-up, freed with the closure
        generator = torch.Generator().manual_seed(0)
        made = [torch.nn.utils.skip_init(torch.nn.Linear, i, o, bias=False, dtype=dtype) for i, o in timed]
        for layer in made:  # its own generator: the caller's random stream is left as it was
            torch.nn.init.uniform_(layer.weight, -0.05, 0.05, generator=generator)
        return made

    @functools.cache
    def inputs(dtype: torch.dtype, rows: int) -> dict[int, torch.Tensor]:  # made at the warm-up
        return random_rows((i for i, _ in timed), rows, dtype)

    def run(dtype: torch.dtype, rows: int) -> None:
        with _onednn_enabled(rows > 1 or dtype != torch.bfloat16):
            run_rows(layers(dtype), inputs(dtype, rows))

    dtypes = {name: _DTYPES[name] for name in ("bfloat16", "float32")}
    context = {"linears": f"{len(timed)}:{sorted(set(timed))}"}
    chosen = {
        rows: calibrated_choice(
            f"cpu-dtype-{rows}-rows",
            {name: functools.partial(run, dtype, rows) for name, dtype in dtypes.items()},
            context=context,
        )
        for rows in (1, BLOCK_ROWS)
    }
    return torch.float32 if set(chosen.values()) == {"float32"} else torch.bfloat16


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """Accept ``"bfloat16"``-style names as well as ``torch.dtype`` objects.

    Raises
    ------
    ConfigError
        For a name other than ``"bfloat16"``, ``"float16"`` or ``"float32"``.
    """
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return _DTYPES[dtype]
    except KeyError:
        from neuroomics_bridge.errors import ConfigError

        raise ConfigError(f"dtype: expected one of {sorted(_DTYPES)}, got {dtype!r}") from None


def route_single_row_matmuls_to_aten(model: torch.nn.Module, *, max_rows: int = 2) -> None:
    """Run CPU forward passes over at most ``max_rows`` token rows without oneDNN.

    :class:`~neuroomics_bridge.backbone.text.TextBackbone` does this where
    :func:`single_row_kernel` measured ATen faster.

    Greedy decoding multiplies one token row by every weight matrix. For bf16 on CPU, oneDNN's
    kernel streams those weights at about half the speed of ATen's own (measured here: 15 ms vs
    7.6 ms for 120 matrices of 1536x576), while for three rows and more oneDNN wins by far. A
    forward pre-hook turns oneDNN off for such tiny forwards and a hook that always runs turns it
    back on, so prefill, batched decoding, encoding and training keep oneDNN. The switch is the
    process-wide ``torch.backends.mkldnn.enabled`` flag: results are deterministic, and a matmul
    running concurrently in another thread may briefly take the slower path. Calling it again
    on the same model does nothing.

    Parameters
    ----------
    model
        The model whose forward passes get the hooks.
    max_rows
        Largest ``batch * sequence`` token count (of ``input_ids`` or ``inputs_embeds``) that
        runs without oneDNN.
    """
    if getattr(model, "_nob_single_row_aten", False):
        return
    model._nob_single_row_aten = True
    saved: list[bool] = []

    def before(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        tokens = kwargs.get("input_ids")
        if tokens is None:
            tokens = kwargs.get("inputs_embeds", args[0] if args else None)
        saved.append(torch.backends.mkldnn.enabled)
        if tokens is not None and tokens.device.type == "cpu" and tokens.shape[0] * tokens.shape[1] <= max_rows:
            torch.backends.mkldnn.enabled = False

    def after(module: torch.nn.Module, args: tuple, kwargs: dict, output: object) -> None:
        torch.backends.mkldnn.enabled = saved.pop()

    model.register_forward_pre_hook(before, with_kwargs=True)
    model.register_forward_hook(after, with_kwargs=True, always_call=True)


def single_row_kernel(model: torch.nn.Module) -> str:
    """The fastest kernel for one-token-row forwards of ``model`` on this CPU.

    Times every linear layer of ``model`` on one row, as a decoding step runs them, three ways:
    ATen (oneDNN off), oneDNN on the plain weight, and oneDNN on a prepacked copy of the weight
    (:class:`~neuroomics_bridge.backbone.packed.PackedLinear`, sibling layers stacked as decoding
    runs them; offered only where oneDNN can pack the weights' dtype on this CPU and a second copy
    of the weights fits in half the available memory). Once per CPU, library versions, dtype and
    layer shapes, then cached (:func:`~neuroomics_bridge.backbone.calibration.calibrated_choice`).
    On an AMD EPYC with AVX512-BF16 ATen beat plain oneDNN by 2x for bf16; on an Intel Xeon with
    AMX the prepacked weights won (README, "Performance"), so it is measured, not assumed.

    Parameters
    ----------
    model
        A model on the CPU (any other device: ``"onednn"``, meaning leave the defaults alone).

    Returns
    -------
    str
        ``"aten"``, ``"onednn"`` or ``"packed"``.
    """
    from neuroomics_bridge.backbone.calibration import calibrated_choice, random_rows, run_rows

    named = [(name, m) for name, m in model.named_modules() if type(m) is torch.nn.Linear]
    linears = [m for _, m in named]
    if not linears or linears[0].weight.device.type != "cpu":
        return "onednn"

    @functools.cache
    def rows() -> dict[int, torch.Tensor]:  # made at the warm-up
        return random_rows((m.in_features for m in linears), 1, linears[0].weight.dtype)

    def decode_step(layers: list[torch.nn.Module], onednn: bool) -> None:
        with _onednn_enabled(onednn):
            run_rows(layers, rows())

    @functools.cache
    def packed() -> list[PackedLinear]:  # as decoding runs them: siblings stacked; freed after timing
        parents: dict[str, torch.nn.Module] = {}
        for name, linear in named:
            parent, _, child = name.rpartition(".")
            parents.setdefault(parent, torch.nn.Module()).add_module(child, PackedLinear.from_linear(linear))
        for parent in parents.values():
            stack_siblings(parent)
        return [layer for parent in parents.values() for layer in parent.children()]

    candidates = {"aten": lambda: decode_step(linears, False), "onednn": lambda: decode_step(linears, True)}
    weight_bytes = sum(m.weight.numel() * m.weight.element_size() for m in linears)
    if linears[0].weight.dtype in PACKABLE_DTYPES and 2 * weight_bytes <= available_memory():
        candidates["packed"] = lambda: decode_step(packed(), True)
    shapes = sorted({(m.in_features, m.out_features) for m in linears})
    context = {
        "dtype": str(linears[0].weight.dtype),
        "linears": f"{len(linears)}:{shapes}",
        "candidates": ",".join(candidates),  # a choice made without "packed" is not the answer with it
        "packed": "siblings stacked",  # what the packed candidate times since 2026-12-06
    }
    return calibrated_choice("single-row-matmul", candidates, context=context, repeats=5)


@contextlib.contextmanager
def _onednn_enabled(enabled: bool) -> Iterator[None]:
    """Set the process-wide oneDNN switch (``torch.backends.mkldnn.enabled``) inside the block only."""
    saved = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = enabled
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = saved


def available_memory(device: torch.device | None = None) -> int:
    """Bytes of memory available to new allocations on ``device``.

    Parameters
    ----------
    device
        A CUDA device, or ``None``/a CPU device for the host.

    Returns
    -------
    int
        For a CUDA device, its free memory plus what PyTorch's caching allocator holds unused
        (freed tensors it keeps for reuse); for the host, Linux's ``MemAvailable``, or less
        where a memory-limited cgroup (a container, a batch job) allows less
        (:func:`cgroup_memory_headroom`); 0 where unknown.
    """
    if device is not None and device.type == "cuda":
        cached_unused = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(torch.cuda.mem_get_info(device)[0]) + cached_unused
    host, headroom = _host_memory_available(), cgroup_memory_headroom()
    if headroom is None:
        return host
    return min(host, headroom) if host else headroom


def _host_memory_available() -> int:
    """Linux's ``MemAvailable`` in bytes; 0 where unknown."""
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


# (folder under the mount, controller as /proc/self/cgroup names it, limit, usage, statistics, the
# statistic of reclaimable file cache) for cgroup v2 and v1
_CGROUP_MEMORY_FILES = (
    ("", "", "memory.max", "memory.current", "memory.stat", "inactive_file"),
    ("memory", "memory", "memory.limit_in_bytes", "memory.usage_in_bytes", "memory.stat", "total_inactive_file"),
)
_NO_CGROUP_LIMIT = 2**60  # cgroup v1 writes "no limit" as a number near 2**63


def cgroup_memory_headroom(root: Path = Path("/sys/fs/cgroup"), membership: str | None = None) -> int | None:
    """Bytes the memory cgroups this process runs in let it allocate before the OOM killer acts.

    ``MemAvailable`` describes the whole host; inside a container or a Slurm/Kubernetes job the
    cgroup's limit is what counts. Headroom is the limit less the cgroup's working set (its
    usage less the inactive file cache, which the kernel reclaims first), as ``docker stats``
    and Kubernetes count it. The process's own cgroup (from ``/proc/self/cgroup``) and each of
    its ancestors may set a limit (Slurm limits the job, its steps run in sub-cgroups), so the
    smallest headroom among them counts; a container that sees its own cgroup as the mount's
    root is read there.

    Parameters
    ----------
    root
        Where the cgroup file system is mounted (cgroup v2's ``memory.max`` or v1's
        ``memory/memory.limit_in_bytes`` under it).
    membership
        The text of ``/proc/self/cgroup`` (default: read it).

    Returns
    -------
    int or None
        The smallest headroom (0 at or over a limit), or ``None`` where no memory limit is set
        or none can be read.
    """
    if membership is None:
        try:
            membership = Path("/proc/self/cgroup").read_text()
        except OSError:
            membership = ""
    headrooms = []
    for folder, controller, limit_name, usage_name, stat_name, reclaimable in _CGROUP_MEMORY_FILES:
        for directory in _cgroup_and_ancestors(root / folder, _cgroup_path(membership, controller)):
            limit_file = directory / limit_name
            if not limit_file.is_file():
                continue
            limit = limit_file.read_text().strip()
            if limit == "max" or int(limit) >= _NO_CGROUP_LIMIT:
                continue
            usage = int((directory / usage_name).read_text())
            stat_file = directory / stat_name
            stats = dict(line.split() for line in stat_file.read_text().splitlines()) if stat_file.is_file() else {}
            headrooms.append(max(int(limit) - (usage - int(stats.get(reclaimable, 0))), 0))
    return min(headrooms) if headrooms else None


def _cgroup_path(membership: str, controller: str) -> str:
    """The cgroup path ``/proc/self/cgroup`` gives for ``controller`` (``""``: cgroup v2's single
    hierarchy), or ``"/"`` where it names none."""
    for line in membership.splitlines():
        fields = line.split(":", 2)  # hierarchy id : controllers : path
        if len(fields) != 3:
            continue
        if (fields[1] == "") if controller == "" else (controller in fields[1].split(",")):
            return fields[2] or "/"
    return "/"


def _cgroup_and_ancestors(base: Path, path: str) -> list[Path]:
    """The existing folders of cgroup ``path`` and of its ancestors under the mount ``base``,
    innermost first (without a cgroup namespace the host's path is not under the container's
    mount, and only ``base`` itself remains)."""
    parts = [part for part in path.split("/") if part]
    folders = [base.joinpath(*parts[:depth]) for depth in range(len(parts), -1, -1)]
    return [folder for folder in folders if folder.is_dir()]

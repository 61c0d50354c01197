"""Checkpoints written by other frameworks' own tools: ``up.load(m, path,
match='structure', names=...)``.

Design constraints: such a file has neither our metadata nor the model's
order (safetensors and HDF5 list names sorted; Flax's ``jit(init)`` sorts
keys), and its values are in the writing framework's native layout. So the
pairing works on layers, not tensors: the file's names are parsed into a
layer path and a role (``kernel``/``weight``/``gamma``..., or a position
for Keras ``vars/<i>``), the model's distinct storages are grouped by the
layer that owns them, and each model layer, in model order, takes the
first file layer (in natural name order) whose tensors have the same shapes
up to axis order: the same layer name first, else the same shapes. Inside a
layer, tensors pair by role, else by position. A value crosses to the
canonical layout chosen from the layouts the writing framework uses, the
first that gives the model's canonical shape. What names cannot decide, a
``names`` map of regex rules settles (a rule may also name the layout a
value is in, where shapes cannot tell); ``check=`` verifies the result.

Each framework's reader is imported only for its own file kind: h5py for
Keras (``.weights.h5``, a ``.keras`` archive's weights, a legacy ``.h5``'s
``model_weights``), ``flax.serialization`` for msgpack, Orbax's own
checkpointer for an Orbax directory, MXNet's loader for ``.params``, and
``torch.load(weights_only=True)`` for PyTorch pickles (tensors and plain
containers only: no code in a file runs; a tied tensor saved under several
names is read once, as ``save_pretrained`` writes it).

Recurrent layers are paired in PyTorch's form, one unit per layer and
direction (``weight_ih``, ``weight_hh``, ``bias_ih``, ``bias_hh``): PyTorch's
``weight_ih_l0`` and Gluon's ``l0_i2h_weight`` (``i2h_weight`` of its
unfused cells in a file) are renamed so; a Keras cell's three positional
variables are crossed with the layout table's rules (gate order, one or a
stacked bias) into those four; a model's one or stacked bias (Keras) is
filled from the two it pairs with (summed or stacked), as ``_pairing`` does
for ports.
"""

from __future__ import annotations

import functools
import re
import zipfile
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from ._errors import ArgumentError, FileFormatError, StateError
from ._format import few, short
from ._layout import CANONICAL, KERNEL_LAST, NATIVE, shape_to_canonical, to_canonical
from ._layout import get as get_layout
from ._layout_table import BIAS_SINGLE, BIAS_STACKED, GATE_GROUPS, GateGroup, lookup
from ._values import Deferred

#: file suffixes read here (safetensors files are read by ``_format``); ``.pt``/``.pth``/``.bin``:
#: PyTorch's own ``torch.save`` pickles, read with ``weights_only=True`` (tensors only, no code)
SUFFIXES = {".h5": "keras", ".hdf5": "keras", ".keras": "keras", ".msgpack": "flax", ".params": "mxnet",
            ".pt": "torch", ".pth": "torch", ".bin": "torch"}
#: files inside an Orbax checkpoint directory (any of them marks one)
_ORBAX_MARKS = ("_METADATA", "_CHECKPOINT_METADATA", "manifest.ocdbt", "_sharding")
#: roles that mean the same in every framework, by class
_ROLES = {
    "weight": "w", "kernel": "w", "gamma": "w", "scale": "w", "embedding": "w", "embeddings": "w",
    "bias": "b", "beta": "b",
    "running_mean": "m", "moving_mean": "m", "mean": "m",
    "running_var": "v", "moving_variance": "v", "var": "v",
    "weight_ih": "wi", "weight_hh": "wh", "bias_ih": "bi", "bias_hh": "bh",
}
#: state only one framework keeps: never paired
_SKIP = {"num_batches_tracked"}
_STAT_ROLES = ("running_mean", "running_var")
#: path tokens that name collections or containers, not layers
_NOISE = {"keras": {"layers", "vars", "_layer_checkpoint_dependencies"}, "flax": {"params", "batch_stats"},
          "mxnet": {"_unfused"}}
#: recurrent roles: PyTorch's ``weight_ih_l0``/``bias_hh_l1_reverse``; Gluon's ``l0_i2h_weight``,
#: ``r0_h2h_bias`` (a model's names) and ``i2h_weight`` (its unfused cells in a save_parameters file)
_TORCH_RNN = re.compile(r"(weight|bias)_(ih|hh)_l(\d+)(_reverse)?")
_GLUON_RNN = re.compile(r"(?:([lr])(\d+)_)?(i2h|h2h)_(weight|bias)")
#: Keras cells by gate count (the recurrent kernel is (units, gates * units))
_KERAS_CELLS = {4: "LSTMCell", 3: "GRUCell", 1: "SimpleRNNCell"}
_CANONICAL_ORIGINS = ("torch", "mxnet", "numpy", "unified_params")


def kind_of(path: Path) -> str | None:
    """The framework whose own file ``path`` is (read here), or ``None``
    for safetensors files and sharded directories (read by ``_io``)."""
    origin = SUFFIXES.get(path.suffix.lower())
    if origin:
        return origin
    if "".join(path.suffixes[-2:]).lower() == ".pth.tar":  # timm's checkpoint-<epoch>.pth.tar
        return "torch"
    if path.is_dir() and any((path / m).exists() for m in _ORBAX_MARKS):
        return "orbax"
    if path.is_dir() and (path / ".metadata").is_file() and any(path.glob("*.distcp")):
        return "dcp"  # PyTorch Distributed Checkpoint (FileSystemWriter's layout)
    return None


def natural_key(name: str) -> tuple[Any, ...]:
    """``layers_10`` after ``layers_2``: digits compare as numbers."""
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name))


def file_order(name: str) -> tuple[Any, ...]:
    """The order a file's names are paired in: natural order, except that a
    ``backward`` layer follows its ``forward`` sibling (Keras ``Bidirectional``'s
    ``forward_layer``/``backward_layer``, Flax's ``forward_rnn``/``backward_rnn``),
    as PyTorch's ``_reverse`` follows the forward direction."""
    return natural_key(name.replace("backward", "forward\x7f"))


@dataclass
class _Tensor:
    name: str
    value: Any  # Deferred or ndarray, in the writer's native layout
    layer: tuple[str, ...]
    role: str  # the writer's role name, or '#<i>' for a position
    fixed: str = ""  # already canonical, crossed from this layout (a Keras cell's parts)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.value.shape)


@dataclass
class _Target:
    name: str
    shape: tuple[int, ...]
    role: str
    layout: str
    layer: tuple[str, ...]
    #: one of two parts of a model's single or stacked recurrent bias: (storage, 'sum'|'stack', index, shape)
    part: tuple[str, str, int, tuple[int, ...]] | None = None


@dataclass
class Pairing:
    """What a structure load paired: ``(file name, model name, layout the value crossed from)``."""

    pairs: list[tuple[str, str, str]] = field(default_factory=list)
    unpaired_file: list[str] = field(default_factory=list)
    unpaired_model: list[str] = field(default_factory=list)


def origin_of(names: Sequence[str], suffix_origin: str | None, meta_backend: str | None) -> str:
    """The framework that wrote a file: from its kind, our metadata, or its names."""
    if suffix_origin:
        return suffix_origin
    if meta_backend:
        return "unified_params"
    last = {re.split(r"[./]", n)[-1] for n in names}
    if last & {"kernel", "scale", "embedding"} or any("/" in n for n in names):
        return "flax"
    if last & {"gamma", "moving_mean", "embeddings"}:
        return "keras"
    return "torch"


def _parse(name: str, origin: str) -> tuple[tuple[str, ...], str]:
    tokens = [t for t in re.split(r"[./:]", re.sub(r":\d+$", "", name)) if t]  # TF's 'kernel:0'
    if tokens and tokens[0] in ("arg", "aux"):  # MXNet's export prefixes
        tokens = tokens[1:]
    if len(tokens) >= 2 and tokens[-1].isdigit() and tokens[-2] == "vars":
        role = f"#{tokens[-1]}"
        tokens = tokens[:-1]
    else:
        role = tokens[-1] if tokens else name
        tokens = tokens[:-1]
    noise = _NOISE.get(origin, set())
    return rnn_form(tuple(t for t in tokens if t not in noise), role)


def rnn_form(layer: tuple[str, ...], role: str) -> tuple[tuple[str, ...], str]:
    """PyTorch's and Gluon's recurrent names as one unit per layer and
    direction: ``(lstm,), weight_ih_l1_reverse`` -> ``(lstm, l1_reverse), weight_ih``."""
    m = _TORCH_RNN.fullmatch(role)
    if m:
        return (*layer, f"l{m[3]}{m[4] or ''}"), f"{m[1]}_{m[2]}"
    m = _GLUON_RNN.fullmatch(role)
    if m:
        sub = () if m[1] is None else (f"l{m[2]}" + ("_reverse" if m[1] == "r" else ""),)
        return (*layer, *sub), f"{m[4]}_{'ih' if m[3] == 'i2h' else 'hh'}"
    return layer, role


def _norm(layer: Sequence[str]) -> tuple[str, ...]:
    return tuple(t for part in layer for t in re.split(r"_+", part.lower()) if t)


def _candidates(origin: str, role: str, ndim: int) -> list[str]:
    """Layouts a value of this writer may be in, most likely first."""
    if origin in _CANONICAL_ORIGINS or ndim < 2 or role in ("embedding", "embeddings"):
        return [CANONICAL]
    general = [f"general:{k}" for k in range(1, ndim)]
    return [KERNEL_LAST, "depthwise_last", "transpose_flipped", *general, CANONICAL]


def _layout_for(t: _Tensor, dst: _Target, origin: str) -> str | None:
    if dst.layout == NATIVE:
        return NATIVE if t.shape == dst.shape and not t.fixed else None
    if t.fixed:
        return t.fixed if t.shape == dst.shape else None
    for lay in _candidates(origin, t.role, len(t.shape)):
        try:
            if shape_to_canonical(t.shape, lay) == dst.shape:
                return lay
        except (ValueError, IndexError):
            continue
    return None


def _forced(t: _Tensor, dst: _Target, layout: str) -> str | None:
    """The user's layout for one tensor, where it gives the model's shape."""
    if dst.layout == NATIVE or t.fixed:
        return None
    try:
        return layout if shape_to_canonical(t.shape, layout) == dst.shape else None
    except (ValueError, IndexError):
        return None


def _signature(shapes: Sequence[tuple[int, ...]]) -> tuple[Any, ...]:
    return tuple(sorted((len(s), tuple(sorted(s))) for s in shapes))


def _convert(value: Any, layout: str, fixed: str = "") -> Any:
    if fixed or layout in (CANONICAL, NATIVE):
        return value
    shape = shape_to_canonical(tuple(value.shape), layout)
    return Deferred(shape, value.dtype, lambda: to_canonical(np.asarray(value), layout))


#: a ``names=`` value: a model name template, ``None`` (ignore), or ``(template, layout)``
Rule = tuple[re.Pattern[str], str | None, str | None]


def _rules(names: Any) -> list[Rule]:
    """``names=`` as ``(pattern, template or None, layout or None)``; a
    layout names the one the file's value is in (``kernel_last`` for
    transformers' ``Conv1D`` weights, stored (in, out)) where shapes
    cannot tell (a square matrix)."""
    if names is None:
        return []
    items = (list(names.items()) if isinstance(names, Mapping) else
             list(names) if isinstance(names, (list, tuple)) else [names])
    out: list[Rule] = []
    for item in items:
        pair = isinstance(item, tuple) and len(item) == 2
        value = item[1] if pair else ()
        template, layout = value if isinstance(value, tuple) and len(value) == 2 else (value, None)
        if not (pair and isinstance(item[0], str) and (template is None or isinstance(template, str))
                and (layout is None or (isinstance(layout, str) and template is not None))):
            raise ArgumentError("names={regex: model name template, None, or (template, layout)} "
                                "(or a list of such pairs)",
                                f"an entry {short(repr(item), 120)}",
                                r"write e.g. names={r'^layers_(\d+)/kernel$': r'\1.weight'}")
        if layout is not None:
            try:
                get_layout(layout)
            except ValueError as exc:
                raise ArgumentError("names= layouts among the layout table's", f"{layout!r} for {item[0]!r}",
                                    f"{exc}; see docs/layouts.md") from None
        try:
            out.append((re.compile(item[0]), template, layout))
        except re.error as exc:
            raise ArgumentError("names= keys that are regular expressions", f"{item[0]!r}: {exc}",
                                "fix the pattern") from None
    return out


def pair_structure(targets: list[_Target], tensors: Mapping[str, Any], origin: str,
                   names: Any = None) -> tuple[dict[str, Any], Pairing]:
    """``{model name: canonical value}`` and the :class:`Pairing` made."""
    rules = _rules(names)
    result = Pairing()
    state: dict[str, Any] = {}
    by_name = {t.name: t for t in targets}
    used_targets: set[str] = set()
    files: list[_Tensor] = []

    def assign(t: _Tensor, d: _Target, lay: str) -> None:
        state[d.name] = _convert(t.value, lay, t.fixed)
        result.pairs.append((t.name, d.part[0] if d.part else d.name, lay))

    for n in sorted(tensors, key=file_order):
        layer, role = _parse(n, origin)
        if role in _SKIP:
            continue
        t = _Tensor(n, tensors[n], layer, role)
        mapped: str | None = n
        forced: str | None = None
        for pattern, template, layout in rules:
            if pattern.search(n):
                mapped = None if template is None else pattern.sub(template, n)
                forced = layout
                break
        else:
            files.append(t)
            continue
        if mapped is None:
            continue  # ignored by the user's map
        dst = by_name.get(mapped)
        if dst is None or dst.name in used_targets:
            raise ArgumentError(f"names= rules that give a model name for {short(n, 80)!r}",
                                f"{short(mapped, 80)!r}, " + ("paired twice" if dst else "not a distinct storage of "
                                                             f"the model (first ones: {few(list(by_name))})"),
                                "fix the rule's replacement (model names: m.params, m.buffers)")
        lay = _layout_for(t, dst, origin) if forced is None else _forced(t, dst, forced)
        if lay is None:
            how = f"layout {forced!r}" if forced else f"no layout of {origin}"
            raise StateError(f"a value for {dst.name!r} of canonical shape {dst.shape}",
                             f"{short(n, 80)!r} of shape {t.shape}, which {how} turns into it",
                             "fix the names= rule, or leave this tensor to the structure pairing")
        assign(t, dst, lay)
        used_targets.add(dst.name)
    if origin == "keras":
        files = _keras_cells(files)
    elif origin == "flax":
        files = _flax_cells(files)

    flayers: dict[tuple[str, ...], list[_Tensor]] = {}
    for t in files:
        flayers.setdefault(t.layer, []).append(t)
    dlayers: dict[tuple[str, ...], list[_Target]] = {}
    for d in targets:
        if d.name not in used_targets:
            dlayers.setdefault(d.layer, []).append(d)
    fsig = {k: _signature([t.shape for t in v]) for k, v in flayers.items()}
    fnorm = {k: _norm(k) for k in flayers}
    free = list(flayers)  # natural order
    taken: set[tuple[str, ...]] = set()
    unpaired: list[_Target] = []
    for dk, dts in dlayers.items():
        sig = _signature([d.shape for d in dts])
        same = [k for k in free if k not in taken and fsig[k] == sig and _same_name(fnorm[k], _norm(dk))]
        choice = min(same, key=lambda k: len(fnorm[k])) if same else None
        if choice is None:
            choice = next((k for k in free if k not in taken and fsig[k] == sig), None)
        pairs = None if choice is None else _within(flayers[choice], dts, origin)
        if choice is None or pairs is None:
            unpaired.extend(dts)
            continue
        taken.add(choice)
        for t, d, lay in pairs:
            assign(t, d, lay)
    _join_parts(targets, state, unpaired)
    result.unpaired_model = list(dict.fromkeys(d.part[0] if d.part else d.name for d in unpaired))
    result.unpaired_file = list(dict.fromkeys(t.name for k in flayers if k not in taken for t in flayers[k]))
    return state, result


def _join_parts(targets: list[_Target], state: dict[str, Any], unpaired: list[_Target]) -> None:
    """A model's single (summed) or stacked recurrent bias from its two
    paired parts; one part without the other leaves the bias unpaired."""
    parts: dict[str, list[_Target]] = {}
    for d in targets:
        if d.part:
            parts.setdefault(d.part[0], []).append(d)
    for name, ds in parts.items():
        values = [state.pop(d.name, None) for d in sorted(ds, key=lambda d: d.part[2] if d.part else 0)]
        if any(v is None for v in values):
            unpaired.extend(d for d in ds if d not in unpaired)
            continue
        how, shape = ds[0].part[1], ds[0].part[3]  # type: ignore[index]
        a, b = values
        dtype = np.result_type(a.dtype, b.dtype)

        def join(a: Any = a, b: Any = b, how: str = how) -> np.ndarray:
            x, y = np.asarray(a), np.asarray(b)
            return x + y if how == "sum" else np.stack([x, y])

        state[name] = Deferred(shape, dtype, join)


def _keras_cells(files: list[_Tensor]) -> list[_Tensor]:
    """Each Keras recurrent cell's ``vars/0..2`` (kernel, recurrent kernel,
    bias) as PyTorch's four, crossed with the layout table's rules."""
    layers: dict[tuple[str, ...], list[_Tensor]] = {}
    for t in files:
        layers.setdefault(t.layer, []).append(t)
    out: list[_Tensor] = []
    for layer, ts in layers.items():
        out.extend(_keras_cell(layer, ts) or ts)
    return out


def _keras_cell(layer: tuple[str, ...], ts: list[_Tensor]) -> list[_Tensor] | None:
    if not layer or layer[-1] != "cell" or sorted(t.role for t in ts) != ["#0", "#1", "#2"]:
        return None
    k, r, b = sorted(ts, key=lambda t: t.role)
    if len(k.shape) != 2 or len(r.shape) != 2 or k.shape[1] != r.shape[1] or not r.shape[0]:
        return None
    units, width = r.shape
    cell = _KERAS_CELLS.get(width // units) if width % units == 0 else None
    stacked = b.shape == (2, width)
    if cell is None or not (stacked or b.shape == (width,)):
        return None
    config = SimpleNamespace(reset_after=stacked)  # what the table's GRU selectors read
    rules = [lookup("keras", (cell,), var, config, len(t.shape))
             for var, t in (("kernel", k), ("recurrent_kernel", r), ("bias", b))]
    if any(rule is None or rule[1] == NATIVE for rule in rules):
        return None  # e.g. GRU(reset_after=False): no PyTorch layer computes it; left unpaired
    (_, lk, _), (_, lr, _), (_, lb, mark) = rules  # type: ignore[misc]
    if (mark == BIAS_STACKED) != stacked:
        return None

    def crossed(t: _Tensor, lay: str, role: str) -> _Tensor:
        shape = shape_to_canonical(t.shape, lay)
        value = Deferred(shape, t.value.dtype, lambda: to_canonical(np.asarray(t.value), lay))
        return _Tensor(t.name, value, layer, role, lay)

    def row(i: int) -> Callable[[], np.ndarray]:
        return lambda: to_canonical(np.asarray(b.value), lb)[i]

    dtype = b.value.dtype
    if mark == BIAS_SINGLE:
        ih = crossed(b, lb, "bias_ih")
        hh = _Tensor(b.name, Deferred((width,), dtype, lambda: np.zeros(width, dtype)), layer, "bias_hh",
                     "zero (one bias)")
    else:
        ih = _Tensor(b.name, Deferred((width,), dtype, row(0)), layer, "bias_ih", f"{lb}[0]")
        hh = _Tensor(b.name, Deferred((width,), dtype, row(1)), layer, "bias_hh", f"{lb}[1]")
    return [crossed(k, lk, "weight_ih"), crossed(r, lr, "weight_hh"), ih, hh]


def _flax_cells(files: list[_Tensor]) -> list[_Tensor]:
    """Each Flax recurrent cell that keeps one Dense per gate (the layout
    table's ``GATE_GROUPS``, found by its children's keys) as PyTorch's four
    stacked tensors, in PyTorch's gate order; a bias block no child holds is
    zero (exact into PyTorch: Flax's single bias is PyTorch's two summed)."""
    by_parent: dict[tuple[str, ...], dict[str, list[_Tensor]]] = {}
    for t in files:
        if t.layer:
            by_parent.setdefault(t.layer[:-1], {}).setdefault(t.layer[-1], []).append(t)
    cells: dict[tuple[str, ...], list[_Tensor]] = {}
    for parent, kids in by_parent.items():
        group = next((g for g in GATE_GROUPS if g.framework == "flax" and set(g.weights) == set(kids)), None)
        joined = None if group is None else _flax_cell(parent, kids, group)
        if joined is not None:
            cells[parent] = joined
    out: list[_Tensor] = []
    emitted: set[tuple[str, ...]] = set()
    for t in files:
        owner = t.layer[:-1] if t.layer else None
        if owner is not None and owner in cells:
            if owner not in emitted:  # where the cell's first tensor was
                out.extend(cells[owner])
                emitted.add(owner)
            continue
        out.append(t)
    return out


def _flax_cell(parent: tuple[str, ...], kids: dict[str, list[_Tensor]], group: GateGroup) -> list[_Tensor] | None:
    parts: dict[str, dict[str, _Tensor]] = {}
    for key, ts in kids.items():
        roles = {t.role: t for t in ts}
        if set(roles) - {"kernel", "bias"} or "kernel" not in roles or len(roles["kernel"].shape) != 2:
            return None
        parts[key] = roles
    units = {parts[k]["kernel"].shape[1] // len(blocks) for k, (_, blocks) in group.weights.items()}
    width = {parts[k]["kernel"].shape[0] for k, (side, _) in group.weights.items() if side == "ih"}
    if len(units) != 1 or len(width) != 1:
        return None
    h, n_in, gates = units.pop(), width.pop(), group.gates
    dtype = next(iter(parts.values()))["kernel"].value.dtype

    def weight(side: str) -> Callable[[], np.ndarray]:
        def get() -> np.ndarray:
            out = np.zeros((gates * h, n_in if side == "ih" else h), dtype)
            for key, (s, blocks) in group.weights.items():
                if s == side:
                    k = to_canonical(np.asarray(parts[key]["kernel"].value), KERNEL_LAST)  # (blocks*H, in)
                    for j, g in enumerate(blocks):
                        out[g * h:(g + 1) * h] = k[j * h:(j + 1) * h]
            return out
        return get

    def bias(which: int) -> Callable[[], np.ndarray]:
        def get() -> np.ndarray:
            out = np.zeros(gates * h, dtype)
            for key, blocks in group.biases.items():
                b = parts.get(key, {}).get("bias")
                if b is None:
                    continue
                value = np.asarray(b.value)
                for j, pair in enumerate(blocks):
                    g = pair[which]
                    if g is not None and (which == 0 or pair[0] is None):  # a block in both: bias_ih, hh zero
                        out[g * h:(g + 1) * h] = value[j * h:(j + 1) * h]
            return out
        return get

    name = "/".join(parent)
    how = f"gates ({group.cell})"
    return [_Tensor(f"{name} {role}", Deferred(shape, dtype, get), parent, role, how)
            for role, shape, get in (("weight_ih", (gates * h, n_in), weight("ih")),
                                     ("weight_hh", (gates * h, h), weight("hh")),
                                     ("bias_ih", (gates * h,), bias(0)), ("bias_hh", (gates * h,), bias(1)))]


def _same_name(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    """One path ends with the other (``model.encoder.fc1`` and ``encoder.fc1``),
    sharing a word, not just a number."""
    n = min(len(a), len(b))
    return n > 0 and a[-n:] == b[-n:] and any(not t.isdigit() for t in a[-n:])


def _within(fts: list[_Tensor], dts: list[_Target], origin: str) -> list[tuple[_Tensor, _Target, str]] | None:
    """Pair one layer's tensors: by role class where every role is known on
    both sides, else by position; ``None`` when shapes do not fit."""
    fcls = [_ROLES.get(t.role, t.role) for t in fts]
    dcls = [_ROLES.get(d.role, d.role) for d in dts]
    orders: list[list[_Tensor]] = []
    if len(set(fcls)) == len(fcls) and sorted(fcls) == sorted(dcls):
        pos = {c: t for c, t in zip(fcls, fts)}
        orders.append([pos[c] for c in dcls])
    positional = sorted(fts, key=lambda t: int(t.role[1:])) if all(t.role.startswith("#") for t in fts) else fts
    orders.append(positional)
    for order in orders:
        out = []
        for t, d in zip(order, dts):
            lay = _layout_for(t, d, origin)
            if lay is None:
                break
            out.append((t, d, lay))
        else:
            return out
    return None


# -- readers of other frameworks' files ---------------------------------------------------------


def _needs(module: str, what: str, where: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise FileFormatError(f"{module} installed, to read {what}", f"{where}, and no {module} here",
                              f"pip install {module}, or convert the file to safetensors where it was written"
                              ) from None


def read(path: Path, where: str, stack: ExitStack) -> tuple[dict[str, Any], str]:
    """The tensors of a Keras ``.weights.h5``, a Flax msgpack, an Orbax
    checkpoint directory, a Gluon ``.params`` file or a PyTorch pickle
    (lazy where the format allows) and the writer's name."""
    kind = kind_of(path) or ""
    readers: dict[str, Callable[[Path, str, ExitStack], dict[str, Any]]] = {
        "keras": _read_h5, "flax": _read_msgpack, "mxnet": _read_params, "torch": _read_torch,
        "orbax": _read_orbax, "dcp": _read_dcp}
    origin = {"orbax": "flax", "dcp": "torch"}.get(kind, kind)
    try:
        return readers[kind](path, where, stack), origin
    except FileFormatError:
        raise
    except Exception as exc:  # a reader's own error on a bad file
        found = f"{where}: {type(exc).__name__}: {short(str(exc), 300)}"
        raise FileFormatError(f"a readable {origin} checkpoint", found,
                              "check that the file is complete and of the kind its suffix says") from None


def _read_h5(path: Path, where: str, stack: ExitStack) -> dict[str, Any]:
    """Keras weights: a ``.weights.h5`` (``save_weights``), the weights of a
    ``.keras`` archive, or a legacy whole-model ``.h5`` (its ``model_weights``;
    the optimizer's state is not the model's)."""
    h5py = _needs("h5py", "a Keras .h5 file", where)
    if zipfile.is_zipfile(path):  # a .keras archive
        archive = stack.enter_context(zipfile.ZipFile(path))
        if "model.weights.h5" not in archive.namelist():
            raise FileFormatError("a .keras archive holding model.weights.h5", f"{where}: "
                                  f"members {few(archive.namelist())}", "save it with model.save('x.keras')")
        f = stack.enter_context(h5py.File(stack.enter_context(archive.open("model.weights.h5")), "r"))
    else:
        f = stack.enter_context(h5py.File(path, "r"))
    if "model_weights" in f:
        f = f["model_weights"]
    out: dict[str, Any] = {}

    def visit(name: str, obj: Any) -> None:
        if name.split("/", 1)[0] in ("optimizer", "optimizer_weights"):
            return  # the optimizer's state (a .keras archive's), not the model's
        if isinstance(obj, h5py.Dataset) and obj.shape is not None:
            out[name] = Deferred(tuple(obj.shape), obj.dtype, _reader(lambda: obj[()]))

    f.visititems(visit)
    return out


def _read_msgpack(path: Path, where: str, stack: ExitStack) -> dict[str, Any]:
    ser = _needs("flax.serialization", "a Flax msgpack file", where)
    return _flatten(ser.msgpack_restore(path.read_bytes()))


def _read_params(path: Path, where: str, stack: ExitStack) -> dict[str, Any]:
    mx = _needs("mxnet", "a Gluon .params file", where)
    loaded = mx.nd.load(str(path))
    if not isinstance(loaded, dict):
        raise FileFormatError("a .params file of named arrays (Block.save_parameters)", f"{where}: a list",
                              "save it with net.save_parameters(path)")
    return {k: Deferred(tuple(v.shape), np.dtype(v.dtype), _reader(v.asnumpy)) for k, v in loaded.items()}


def _read_orbax(path: Path, where: str, stack: ExitStack) -> dict[str, Any]:
    """An Orbax pytree checkpoint (a directory), restored as NumPy arrays
    by Orbax's own reader."""
    ocp = _needs("orbax.checkpoint", "an Orbax checkpoint", where)
    import jax

    checkpointer, target = ocp.PyTreeCheckpointer(), str(path.absolute())
    # Every leaf as a host NumPy array: a checkpoint saved sharded over other
    # devices (or processes) than this one has restores without its topology.
    meta = checkpointer.metadata(target)
    tree = getattr(meta, "item_metadata", None) or meta
    args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree,
                        is_leaf=lambda x: hasattr(x, "shape"))
    return _flatten(checkpointer.restore(target, restore_args=args))


def _read_dcp(path: Path, where: str, stack: ExitStack) -> dict[str, Any]:
    """A PyTorch Distributed Checkpoint directory, however many processes
    wrote it: its metadata names every tensor (global shape, dtype), and
    each tensor is read when it is written, alone, by DCP's own loader in
    this process (``no_dist``), whatever sharding it was saved with.
    Entries that are not tensors (an optimizer's step counters, bytes) are
    not the model's."""
    _needs("torch", "a PyTorch Distributed Checkpoint", where)
    import warnings

    import torch
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    meta = dcp.FileSystemReader(str(path)).read_metadata()

    def load(key: str, size: Any, dtype: Any) -> np.ndarray:
        out = {key: torch.empty(size, dtype=dtype)}
        with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
            warnings.simplefilter("ignore", UserWarning)
            dcp.load(out, storage_reader=dcp.FileSystemReader(str(path)), no_dist=True)
        return _torch_numpy(out[key])

    result: dict[str, Any] = {}
    for key, md in meta.state_dict_metadata.items():
        if isinstance(md, TensorStorageMetadata):
            dtype = md.properties.dtype
            result[key] = Deferred(tuple(int(d) for d in md.size), _torch_dtype(torch.empty(0, dtype=dtype)),
                                   functools.partial(load, key, md.size, dtype))
    return result


def _flatten(tree: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, Mapping):
            for k, v in node.items():
                walk(f"{prefix}/{k}" if prefix else str(k), v)
        elif node is not None:
            out[prefix] = np.asarray(node)

    walk("", tree)
    return out


def _read_torch(path: Path, where: str, stack: ExitStack) -> dict[str, Any]:
    """A ``torch.save`` pickle of a state dict (or of a checkpoint dict that
    holds one under ``state_dict``/``model``, as timm and Lightning write),
    unpickled with ``weights_only=True``: tensors and plain containers only,
    never code."""
    torch = _needs("torch", "a PyTorch .pt/.pth/.bin file", where)
    import pickle

    try:
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # an old (non-zip) pickle cannot be memory-mapped
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise FileFormatError("a torch.save pickle of tensors and plain containers (read with "
                              "weights_only=True: no code in a file runs)",
                              f"{where}: {short(str(exc).splitlines()[0] if str(exc) else '', 300)}",
                              "save only the state dict (torch.save(model.state_dict(), path)), or convert it "
                              "to safetensors where it was written; unified_params never unpickles code"
                              ) from None
    if isinstance(obj, Mapping) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        inner = next((obj[k] for k in ("state_dict", "model", "module") if isinstance(obj.get(k), Mapping)), None)
        obj = inner if inner is not None else obj
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        found = (f"a {type(obj).__name__}" if not isinstance(obj, Mapping) else
                 f"a dict of non-tensors (keys {few([str(k) for k in obj])})")
        raise FileFormatError("a torch.save of a state dict {name: tensor} (or a checkpoint dict holding one "
                              "under 'state_dict' or 'model')", f"{where}: {found}",
                              "save model.state_dict() with torch.save, or with safetensors.torch.save_file")
    out: dict[str, Any] = {}
    seen: set[tuple[Any, ...]] = set()
    for k, v in obj.items():
        # a tied parameter (BERT's decoder, GPT-2's lm_head) is saved under each of its names, one
        # storage: the first name only, as save_pretrained and safetensors' save_model write it
        key = (v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape), tuple(v.stride()), v.dtype)
        if v.numel() and key in seen:
            continue
        seen.add(key)
        out[str(k)] = Deferred(tuple(v.shape), _torch_dtype(v), functools.partial(_torch_numpy, v))
    return out


def _torch_dtype(t: Any) -> np.dtype[Any]:
    """NumPy's dtype of a tensor; bfloat16 and float8 as ``ml_dtypes``'."""
    name = str(t.dtype).removeprefix("torch.")
    try:
        return np.dtype(name)
    except TypeError:
        import ml_dtypes

        return np.dtype(getattr(ml_dtypes, name))


def _torch_numpy(t: Any) -> np.ndarray:
    import torch

    t = t.detach().cpu()
    dtype = _torch_dtype(t)
    if dtype.kind == "V" or dtype.type.__module__.startswith("ml_dtypes"):  # no NumPy dtype in torch: its bits
        bits = {1: torch.uint8, 2: torch.int16, 4: torch.int32}[dtype.itemsize]
        return t.contiguous().view(bits).numpy().view(dtype)
    return t.numpy()


def _reader(get: Callable[[], Any]) -> Callable[[], np.ndarray]:
    return lambda: np.asarray(get())


def targets_of(params: Sequence[Any], buffers: Sequence[Any]) -> list[_Target]:
    """The model's distinct storages grouped by owning layer (params, then
    running statistics); recurrent ones in PyTorch's form (see the module doc)."""
    out = []
    for p in list(params) + [b for b in buffers if b.role in _STAT_ROLES]:
        layer, role = rnn_form(tuple(p.name.split(".")[:-1]), p.role)
        shape = tuple(p.shape)
        mark = getattr(getattr(p, "_leaf", None), "rnn_bias", "")
        if mark in (BIAS_SINGLE, BIAS_STACKED) and len(shape) == (1 if mark == BIAS_SINGLE else 2):
            how, one = ("sum", shape) if mark == BIAS_SINGLE else ("stack", shape[1:])
            for i, half in enumerate(("ih", "hh")):
                out.append(_Target(f"{p.name}[{half}]", one, f"bias_{half}", p.layout, layer, (p.name, how, i, shape)))
            continue
        out.append(_Target(p.name, shape, role, p.layout, layer))
    order = {k: i for i, k in enumerate(dict.fromkeys(t.layer for t in out))}
    return sorted(out, key=lambda t: order[t.layer])  # stable: params before statistics in a layer

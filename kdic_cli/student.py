"""Teacher-guided student construction: same classes and stage layout, fewer channels.

The student is initialised from the teacher by keeping, in each channel group, the
channels that carry the most energy on calibration images. Which widths the groups get:

- class (default): exactly what the teacher's compressai class builds at N * width, the
  latent width M kept (`class_spec`), so compressai's own loaders (`from_state_dict`,
  eval_model) read the student. For bmshj2018-hyperprior, mbt2018-mean and mbt2018 every
  interface of the stage-wise hybrids keeps its width. cheng2020-anchor ties M to N and
  elic2022-official derives its hyper-parameters and parameter aggregation from N: there
  the student's channels outside the narrowed groups are the teacher's leading ones, and
  the student is marked as not stage-wise (it trains end to end).
- free: every *free* channel group narrowed by `width` (uneven widths, a kdic-only spec
  with resized layers); all interfaces kept whole, so stage-wise distillation works for
  every class. Only this mode narrows widths that the classes fix or derive from M:
  the context model's output and the entropy-parameter network's hidden layers (mbt2018,
  cheng2020-anchor), ELIC's channel-context and parameter-aggregation hidden layers.
  cheng2020-anchor needs it to stay within 45% of the teacher's kMAC/px: with M kept at
  the teacher's N, its class-native student changes the latent width, and its free one
  must narrow the sub-pixel (pixel-shuffle) upsampling, where most of its MACs are.
Both modes keep at most 45% of the teacher's kMAC/px at width 0.5 for every class
(measured 25-40% at N=128, M=192, ELIC 192/320; tests/kdic/test_student.py checks it).
S2C-Conv (this toolkit's own class) narrows its stage widths, and optionally its blocks
and FFN expansion, the same way in both modes.

A channel group is a set of tensors whose channel axes must shrink together: the output
of a convolution, everything a depth-wise conv, GDN or activation passes through, and
all operands of a residual add. Groups are found by tracing the analysis/synthesis and
hyper transforms with torch.fx (and the entropy-model networks named above). A group
may be *derived* from others: a channel concatenation narrows with its parts, and the
input of a pixel shuffle by r keeps the r^2 channels of each kept output channel
(`ChannelPlan.derive`). Groups that touch the image, the latent y (its width M is
kept), the hyper-synthesis output, the Gaussian parameters, or an operation whose
channel mapping is unknown are frozen (kept whole by free widths), so a free student
always fits the teacher's entropy model interfaces. The hyper-latent z group is shared
by h_a's output, the entropy bottleneck and h_s's input.
"""

from __future__ import annotations

import copy
import operator
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
from torch import Tensor, nn

__all__ = ["ChannelPlan", "analyse_channels", "build_student", "class_spec", "TRANSFORMS"]

TRANSFORMS = ("g_a", "h_a", "h_s", "g_s")
# entropy-model networks outside the transforms whose hidden widths may narrow
_SIDE_NETWORKS = {"entropy_parameters", "channel_context"}
_ELEMENTWISE_MODULES = (
    nn.ReLU, nn.LeakyReLU, nn.GELU, nn.Sigmoid, nn.Tanh, nn.SiLU, nn.Identity, nn.ELU,
    nn.Hardswish, nn.Dropout,
)  # fmt: skip
_BINARY = {operator.add, operator.iadd, operator.mul, operator.imul, operator.sub,
           operator.isub, operator.truediv, torch.add, torch.mul, torch.sub}  # fmt: skip
_UNARY_FUNCS = {torch.abs, torch.sigmoid, torch.relu, torch.tanh, operator.neg,
                torch.nn.functional.relu, torch.nn.functional.gelu,
                torch.nn.functional.leaky_relu, torch.nn.functional.sigmoid}  # fmt: skip
_UNARY_METHODS = {"abs", "sigmoid", "relu", "tanh", "neg", "contiguous", "clone", "clamp",
                  "clamp_min", "exp", "sqrt", "rsqrt"}  # fmt: skip


def find_transforms(model: nn.Module) -> dict[str, nn.Sequential]:
    """Paths of g_a, h_a, h_s, g_s (nested ones too, as in compressai's latent codecs)."""
    found: dict[str, nn.Sequential] = {}
    for key in TRANSFORMS:
        for name, module in model.named_modules():
            if name.split(".")[-1] == key and isinstance(module, nn.Sequential):
                found[name] = module
                break
    return found


def _entropy_bottlenecks(model: nn.Module) -> list[str]:
    from compressai.entropy_models import EntropyBottleneck

    return [n for n, m in model.named_modules() if isinstance(m, EntropyBottleneck)]


class _LeafTracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        from compressai.layers import GDN

        return isinstance(m, GDN) or not list(m.children())


@dataclass
class Leaf:
    path: str
    module: nn.Module
    g_in: int | None
    g_out: int | None
    depthwise: bool = False


@dataclass
class ChannelPlan:
    """Result of the group analysis on one model."""

    parent: list[int] = field(default_factory=list)
    size: list[int] = field(default_factory=list)
    frozen: list[bool] = field(default_factory=list)
    leaves: list[Leaf] = field(default_factory=list)
    # (child path, node name) -> group, for the energy of every traced tensor
    nodes: dict[tuple[str, str], int] = field(default_factory=dict)
    # transform path -> group of each boundary between its top-level children
    boundaries: dict[str, list[int]] = field(default_factory=dict)
    graphs: dict[str, fx.GraphModule] = field(default_factory=dict)
    eb: dict[str, int] = field(default_factory=dict)  # entropy bottleneck path -> group
    # groups whose channels follow other groups' (see `derive`), as recorded while tracing
    links: list[tuple[int, tuple[int, ...], int]] = field(default_factory=list)
    # after `settle`: root of a derived group -> (roots of its parts, factor)
    derived: dict[int, tuple[tuple[int, ...], int]] = field(default_factory=dict)

    def new(self, size: int, frozen: bool = False) -> int:
        self.parent.append(len(self.parent))
        self.size.append(size)
        self.frozen.append(frozen)
        return len(self.parent) - 1

    def find(self, g: int) -> int:
        while self.parent[g] != g:
            self.parent[g] = self.parent[self.parent[g]]
            g = self.parent[g]
        return g

    def union(self, a: int, b: int) -> int:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return ra
        if self.size[ra] != self.size[rb]:  # broadcasting, not a channel-wise add
            self.frozen[ra] = self.frozen[rb] = True
            return ra
        self.parent[rb] = ra
        self.frozen[ra] = self.frozen[ra] or self.frozen[rb]
        return ra

    def freeze(self, g: int | None) -> None:
        if g is not None:
            self.frozen[self.find(g)] = True

    def is_free(self, g: int | None) -> bool:
        return g is not None and not self.frozen[self.find(g)]

    def derive(self, g: int, parts: list[int], factor: int = 1) -> None:
        """Group `g` is the channel-wise concatenation of `parts`, each channel of a part
        standing for `factor` consecutive channels of `g`: torch.cat (factor 1), or the
        input of a pixel shuffle by r (one part, the shuffle's output, factor r^2).
        Narrowing the parts narrows `g` accordingly."""
        self.links.append((g, tuple(parts), factor))

    def settle(self) -> None:
        """Resolve the links once the groups are final: a derived group that is frozen
        freezes its parts, one whose parts are all frozen is frozen, and a group derived
        in two different ways (or from itself) is kept whole."""
        self.derived = {}
        clash: set[int] = set()
        for g, parts, factor in self.links:
            root, link = self.find(g), (tuple(self.find(p) for p in parts), factor)
            if root in link[0] or self.derived.get(root, link) != link:
                clash.add(root)
            self.derived[root] = link
        for root in self.derived:  # a group derived, through others, from itself
            seen, todo = set(), list(self.derived[root][0])
            while todo and root not in seen:
                g = todo.pop()
                if g not in seen:
                    seen.add(g)
                    todo.extend(self.derived.get(g, ((), 1))[0])
            if root in seen:
                clash.add(root)
        for root in clash:
            self.freeze(root)
        changed = True
        while changed:
            changed = False
            for root, (parts, _) in self.derived.items():
                if self.frozen[root] and any(not self.frozen[p] for p in parts):
                    for p in parts:
                        self.frozen[p] = True
                    changed = True
                elif not self.frozen[root] and all(self.frozen[p] for p in parts):
                    self.frozen[root] = changed = True

    def free_groups(self) -> list[int]:
        """Roots of the groups whose widths are chosen (free, not derived from others)."""
        return sorted({self.find(g) for g in range(len(self.parent))
                       if self.is_free(g) and self.find(g) not in self.derived})  # fmt: skip

    def expand(self, keep: dict[int, Tensor]) -> dict[int, Tensor]:
        """`keep` (kept indices per free group) with the kept indices of every free derived
        group added; a frozen part counts whole."""
        out = dict(keep)

        def of(g: int) -> Tensor:
            if self.frozen[g]:
                return torch.arange(self.size[g])
            if g in out:
                return out[g]
            if g not in self.derived:
                return torch.arange(self.size[g])
            parts, factor = self.derived[g]  # no cycles: `settle` froze them
            pieces, offset = [], 0
            for p in parts:
                idx = of(p)
                pieces.append(offset + (idx[:, None] * factor + torch.arange(factor)).flatten())
                offset += self.size[p] * factor
            out[g] = torch.cat(pieces)
            return out[g]

        for g in self.derived:
            of(g)
        return out

    def expand_sizes(self, sizes: dict[int, int]) -> dict[int, int]:
        """`sizes` (per free group) with the sizes of the derived groups added."""
        dummy = {g: torch.zeros(n, dtype=torch.long) for g, n in sizes.items()}
        return {g: len(idx) for g, idx in self.expand(dummy).items()}


def _trace_child(plan: ChannelPlan, path: str, child: nn.Module, g_in: int) -> int:
    """Propagate channel groups through one top-level child of a transform."""
    from compressai.layers import GDN

    wrapper = nn.Sequential(child)
    gm = fx.GraphModule(wrapper, _LeafTracer().trace(wrapper))
    plan.graphs[path] = gm
    vals: dict[fx.Node, int | None] = {}
    out_g: int | None = None
    for node in gm.graph.nodes:
        tensor_args = [vals.get(a) for a in node.args if isinstance(a, fx.Node)]
        first = tensor_args[0] if tensor_args else None
        nested: list[fx.Node] = []  # every tensor operand, also those inside lists
        fx.node.map_arg((node.args, node.kwargs), nested.append)
        g: int | None = None
        if node.op == "placeholder":
            g = g_in
        elif node.op == "call_module":
            m = gm.get_submodule(node.target)
            leaf_path = f"{path}.{node.target[2:]}" if node.target != "0" else path
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                dw = m.groups > 1 and m.groups == m.in_channels == m.out_channels
                if m.groups > 1 and not dw:
                    plan.freeze(first)
                    g = plan.new(m.out_channels, frozen=True)
                elif dw:
                    g = first
                else:
                    g = plan.new(m.out_channels)
                if first is None:  # unknown input channels: keep them
                    first = plan.new(m.in_channels, frozen=True)
                    g = first if dw else g
                plan.leaves.append(Leaf(leaf_path, m, first, g, dw))
            elif isinstance(m, GDN):
                g = first
                plan.leaves.append(Leaf(leaf_path, m, first, first))
            elif isinstance(m, _ELEMENTWISE_MODULES) and not list(m.parameters()):
                g = first
            elif isinstance(m, nn.PixelShuffle):
                g = _shuffle(plan, first, m.upscale_factor)
            elif isinstance(m, nn.PixelUnshuffle):
                g = _shuffle(plan, first, m.downscale_factor, down=True)
            else:
                plan.freeze(first)  # unknown leaf: keep its channels whole
                g = None
        elif node.op in ("call_function", "call_method"):
            gs = [t for t in tensor_args if t is not None]
            if node.target in (torch.cat, torch.concat) and _dim(node) in (1, -3):
                g = _concat(plan, [vals.get(a) for a in nested])
            elif (
                node.target in (nn.functional.pixel_shuffle, torch.pixel_shuffle)
                and len(node.args) > 1
                and isinstance(node.args[1], int)
            ):
                g = _shuffle(plan, first, node.args[1])
            elif len(nested) != len(tensor_args) or None in tensor_args:
                # an operand of unknown channel layout, or tensors inside a list
                for t in nested:
                    plan.freeze(vals.get(t))
            elif node.target in _BINARY and gs:
                g = gs[0]
                for other in gs[1:]:
                    g = plan.union(g, other)
            elif (node.target in _UNARY_FUNCS or node.target in _UNARY_METHODS) and gs:
                g = gs[0]
            else:
                for t in nested:
                    plan.freeze(vals.get(t))
        elif node.op == "output":
            out_g = first
        vals[node] = g
        if g is not None:
            plan.nodes[(path, node.name)] = g
    if out_g is None:
        out_g = plan.new(-1, frozen=True)
    return out_g


def _dim(node: fx.Node) -> int | None:
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    return dim if isinstance(dim, int) else None


def _shuffle(plan: ChannelPlan, g_in: int | None, r: int, down: bool = False) -> int | None:
    """Output group of a pixel (un)shuffle by `r`: the r^2 channels that one output
    channel gathers (or one input channel spreads into) are narrowed together."""
    if g_in is None:
        return None
    k, size = r * r, plan.size[plan.find(g_in)]
    if size < 1 or (not down and size % k):
        plan.freeze(g_in)
        return None
    if down:
        g = plan.new(size * k)
        plan.derive(g, [g_in], k)
    else:
        g = plan.new(size // k)
        plan.derive(g_in, [g], k)
    return g


def _concat(plan: ChannelPlan, parts: list[int | None]) -> int | None:
    """Group of a channel concatenation of `parts` (None where a part is unknown)."""
    sizes = [plan.size[plan.find(p)] if p is not None else -1 for p in parts]
    if min(sizes, default=-1) < 1:
        for p in parts:
            plan.freeze(p)
        return None
    g = plan.new(sum(sizes))
    plan.derive(g, [p for p in parts if p is not None])
    return g


def _trace_entropy_parameters(model: nn.Module, plan: ChannelPlan, params: int) -> None:
    """compressai's joint autoregressive models (mbt2018, cheng2020-anchor) feed
    `entropy_parameters` with cat(h_s output `params`, context_prediction(y_hat)): the
    context model's output and the hidden widths of the entropy-parameter network are
    internal to the entropy model and may narrow; y and the Gaussian parameters may not."""
    from compressai.models import JointAutoregressiveHierarchicalPriors

    ctx = getattr(model, "context_prediction", None)
    ep = getattr(model, "entropy_parameters", None)
    if not (isinstance(model, JointAutoregressiveHierarchicalPriors)
            and isinstance(ctx, nn.Conv2d) and isinstance(ep, nn.Sequential)):  # fmt: skip
        return
    g_ctx = _trace_child(plan, "context_prediction", ctx, plan.new(ctx.in_channels, True))
    g = _concat(plan, [params, g_ctx])
    if g is None or plan.size[g] != getattr(ep[0], "in_channels", None):
        plan.freeze(g_ctx)
        return
    for i, child in enumerate(ep):
        g = _trace_child(plan, f"entropy_parameters.{i}", child, g)
    plan.freeze(g)  # the means and scales of the Gaussian conditional


def analyse_channels(model: nn.Module) -> ChannelPlan:
    """Channel groups of a compressai-style model (see the module docstring)."""
    plan = ChannelPlan()
    transforms = find_transforms(model)
    z_group: int | None = None
    for path, seq in transforms.items():
        key = path.split(".")[-1]
        # h_s reads the hyper-latent z; every other transform starts at the image or the
        # latent y, which are never narrowed
        g = z_group if key == "h_s" and z_group is not None else plan.new(-1, frozen=True)
        bounds = [g]
        for i, child in enumerate(seq):
            g = _trace_child(plan, f"{path}.{i}", child, g)
            bounds.append(g)
        if key == "h_a":
            z_group = g
        else:
            plan.freeze(g)
        plan.boundaries[path] = bounds
    ebs = _entropy_bottlenecks(model)
    if z_group is not None and len(ebs) == 1:
        eb = model.get_submodule(ebs[0])
        if plan.size[plan.find(z_group)] == eb.channels:
            plan.eb[ebs[0]] = z_group
        else:
            plan.freeze(z_group)
    elif z_group is not None:
        plan.freeze(z_group)
    if "h_s" not in {p.split(".")[-1] for p in transforms} and z_group is not None:
        plan.freeze(z_group)
    if "h_s" in plan.boundaries:
        _trace_entropy_parameters(model, plan, plan.boundaries["h_s"][-1])
    for path, seq in model.named_modules():
        # ELIC's channel-context and parameter-aggregation networks: hidden widths only
        if not (isinstance(seq, nn.Sequential) and _SIDE_NETWORKS & set(path.split("."))):
            continue
        if not any(f"{path}.".startswith(f"{p}.") or p.startswith(f"{path}.")
                   for p in plan.graphs):  # fmt: skip
            g = plan.new(-1, frozen=True)
            for i, child in enumerate(seq):
                g = _trace_child(plan, f"{path}.{i}", child, g)
            plan.freeze(g)
    plan.settle()
    return plan


# ----------------------------------------------------------------------------------------
# energy of each channel on calibration images


@torch.no_grad()
def channel_energy(model: nn.Module, plan: ChannelPlan, images: Iterable[Tensor]) -> dict:
    """Per free group: the channel energies (mean square), each traced tensor normalised to
    unit total so that no single layer dominates the ranking."""
    inputs: dict[str, list[Tensor]] = {}
    hooks = []
    for path in plan.graphs:
        module = model.get_submodule(path)

        def pre(_m: nn.Module, args: tuple, path: str = path) -> None:
            inputs.setdefault(path, []).append(args[0].detach())

        hooks.append(module.register_forward_pre_hook(pre))
    was_training = model.training
    model.eval()
    try:
        for x in images:
            model(x)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)

    energy: dict[int, Tensor] = {}

    class _Recorder(fx.Interpreter):
        def run_node(self, n: fx.Node) -> Any:
            out = super().run_node(n)
            g = plan.nodes.get((self.path, n.name))
            if g is not None and isinstance(out, Tensor) and out.dim() == 4:
                root = plan.find(g)
                if not plan.frozen[root]:
                    e = out.double().pow(2).mean(dim=(0, 2, 3))
                    e = e / e.sum().clamp_min(1e-12)
                    energy[root] = energy.get(root, 0) + e
            return out

    for path, gm in plan.graphs.items():
        rec = _Recorder(gm)
        rec.path = path
        for x in inputs.get(path, []):
            rec.run(x)
    return energy


def select_channels(
    plan: ChannelPlan, energy: dict[int, Tensor], sizes: dict[int, int]
) -> dict[int, Tensor]:
    """Kept channel indices (ascending) per narrowed group: the highest-energy ones; a
    derived group keeps what its parts keep."""
    keep: dict[int, Tensor] = {}
    for g in plan.free_groups():
        full, new = plan.size[g], sizes.get(g, plan.size[g])
        if new > full or new < 1:
            raise ValueError(f"group of {full} channels cannot become {new}")
        if new == full:
            keep[g] = torch.arange(full)
        else:
            e = energy.get(g)
            if e is None:
                e = torch.zeros(full)
            keep[g] = torch.topk(e, new).indices.sort().values
    return plan.expand(keep)


# ----------------------------------------------------------------------------------------
# building the student


def _idx(plan: ChannelPlan, keep: dict[int, Tensor], g: int | None) -> Tensor | None:
    if g is None or not plan.is_free(g):
        return None
    return keep.get(plan.find(g))


def _leaf_index(leaf: Leaf, i_in: Tensor | None, i_out: Tensor | None) -> dict[str, dict]:
    """Kept channel indices of a leaf's tensors: state-dict suffix -> {axis: indices}."""
    from compressai.layers import GDN

    m, out, inp = leaf.module, {0: i_out}, {1: i_in}
    if isinstance(m, nn.ConvTranspose2d):
        axes = {"weight": {0: i_in, 1: i_out}, "bias": out}
    elif isinstance(m, nn.Conv2d):
        w = out if leaf.depthwise else {**out, **inp}
        axes = {"weight": w, "mask": w, "bias": out}
    elif isinstance(m, GDN):
        axes = {"beta": {0: i_in}, "gamma": {0: i_in, 1: i_in}}
    else:
        return {}
    return {k: {d: i for d, i in v.items() if i is not None} for k, v in axes.items()}


def _copy_from_teacher(
    view: nn.Module, student: nn.Module, index: dict[str, dict[int, Tensor]]
) -> list[str]:
    """Fill every student tensor from the teacher's: the kept channels where `index` names
    them, the leading channels on any other axis that is narrower (a width the class
    constructor ties to N outside the traced groups). Returns the tensors not filled by
    kept channels alone (leading channels, or left as initialised where wider); CDF tables
    are left to `update()`."""
    from kdic_cli.models import CDF_BUFFERS

    t_state, s_state = view.state_dict(), student.state_dict()
    fallback = []
    with torch.no_grad():
        for key, dst in s_state.items():
            src = t_state.get(key)
            if src is None or src.dim() != dst.dim() or key.endswith(CDF_BUFFERS):
                continue
            for dim, idx in index.get(key, {}).items():
                src = src.index_select(dim, idx)
            if src.shape == dst.shape:
                dst.copy_(src)
                continue
            fallback.append(key)
            if all(d <= s for d, s in zip(dst.shape, src.shape, strict=True)):
                dst.copy_(src[tuple(slice(0, d) for d in dst.shape)])
    return fallback


def _s2c_teacher_view(
    teacher: nn.Module, images: list[Tensor], blocks: list[int]
) -> tuple[nn.Module, list[list[int]]]:
    """The teacher with, per stage, only the blocks whose residual branches carry the most
    energy (kept in order). Synthesis stage j mirrors analysis stage 2 - j."""
    from kdic_cli.s2c import S2CBlock

    contrib: dict[int, float] = {}
    hooks = []
    for m in teacher.modules():
        if isinstance(m, S2CBlock):

            def hook(mod: nn.Module, args: tuple, out: Tensor) -> None:
                contrib[id(mod)] = contrib.get(id(mod), 0.0) + float(
                    (out - args[0]).pow(2).mean() / args[0].pow(2).mean().clamp_min(1e-12)
                )

            hooks.append(m.register_forward_hook(hook))
    with torch.no_grad():
        teacher.eval()
        for x in images:
            teacher(x)
    for h in hooks:
        h.remove()
    view = copy.deepcopy(teacher)
    kept_all = []
    for key in ("g_a", "g_s"):
        seq = getattr(view, key)
        for s, stage in enumerate(seq):
            d = blocks[s if key == "g_a" else 2 - s]
            orig = getattr(teacher, key)[s]
            ids = [i for i, m in enumerate(orig) if isinstance(m, S2CBlock)]
            if d > len(ids):
                raise ValueError(f"student blocks {d} > teacher blocks {len(ids)}")
            best = sorted(ids, key=lambda i: -contrib.get(id(orig[i]), 0.0))[:d]
            keep = [i for i, m in enumerate(orig) if i in best or not isinstance(m, S2CBlock)]
            kept_all.append([i for i in keep if i in ids])
            seq[s] = nn.Sequential(*[stage[i] for i in keep])
    return view, kept_all


def class_spec(t_spec: dict[str, Any], width: float) -> dict[str, Any]:
    """The spec of the teacher's compressai class at N * width; M (the latent y and every
    width the class derives from it) is kept, so the student's y fits the teacher's."""
    spec = {"name": t_spec["name"], "N": max(1, round(width * t_spec["N"]))}
    if "M" in t_spec:
        spec["M"] = t_spec["M"]
    return spec


def build_student(
    teacher: nn.Module,
    images: Iterable[Tensor],
    width: float = 0.5,
    blocks: list[int] | None = None,
    ffn_ratio: float | None = None,
    widths: str = "class",
) -> tuple[nn.Module, dict[str, Any]]:
    """A student of the same class as `teacher`, initialised with the teacher's
    highest-energy channels.

    `widths="class"` (compressai teachers): the student is exactly what the teacher's class
    builds at N * width (M kept), so compressai's loaders read its checkpoint; each channel
    group takes the width that constructor implies. Where the class derives an interface
    of the stage-wise hybrids from N (cheng2020-anchor ties M to N; elic2022-official's
    hyper-synthesis output and parameter aggregation follow N), those channels are the
    teacher's leading ones and `info["stagewise"]` is False: such a student trains end to
    end only (build it with `widths="free"` for stage-wise distillation).
    `widths="free"`: every free channel group narrowed by `width` (uneven widths, the
    interfaces whole, a kdic-only spec), the entropy model's internal widths and the
    pixel-shuffle upsampling included. "class" stays the default: it is what compressai
    users can load, and it is within 45% of the teacher's kMAC/px at width 0.5 too.

    For S2C-Conv teachers (kdic's own class, built from its config either way), `blocks`
    (3 counts) drops the blocks with the weakest residual branches and `ffn_ratio` sets the
    student's FFN expansion. Returns the student (with its `kdic_spec`) and an info dict
    with the channel maps that stage-wise distillation needs (`boundaries`, `eb`: kept
    teacher channel indices, None where kept whole)."""
    from kdic_cli.models import build_model, model_spec

    if not 0 < width <= 1:
        raise ValueError(f"width must be in (0, 1], got {width}")
    if widths not in ("class", "free"):
        raise ValueError(f"widths must be class or free, got {widths!r}")
    images = list(images)
    t_spec = model_spec(teacher)
    teacher = teacher.eval()
    is_s2c = t_spec["name"] == "s2c-conv"
    if not is_s2c and (blocks is not None or ffn_ratio is not None):
        raise ValueError("--blocks and --ffn-ratio apply to s2c-conv teachers only")
    if not is_s2c and widths == "class" and t_spec.get("resize"):
        raise ValueError("the teacher has free widths (a free student); use widths free")
    view, kept_blocks = teacher, None
    if is_s2c and blocks is not None:
        view, kept_blocks = _s2c_teacher_view(teacher, images, blocks)
    plan = analyse_channels(view)
    energy = channel_energy(view, plan, images)

    if is_s2c:
        cfg = dict(t_spec["config"])
        c_s = [max(1, round(width * c)) for c in cfg["widths"]]
        b_s = list(blocks if blocks is not None else cfg["blocks"])
        r_s = cfg["ffn_ratio"] if ffn_ratio is None else ffn_ratio
        hid = [[max(1, round(c_s[s] * r_s))] * b_s[s] for s in range(3)]
        cfg.update(widths=c_s, blocks=b_s, ffn_ratio=r_s, N=max(1, round(width * cfg["N"])),
                   hidden=hid + hid[::-1])  # fmt: skip
        s_spec = {"name": "s2c-conv", "config": cfg}
    elif widths == "class":
        s_spec = class_spec(t_spec, width)
    else:
        sizes = {g: max(1, round(width * plan.size[g])) for g in plan.free_groups()}
        sizes = plan.expand_sizes(sizes)
        s_spec = {**t_spec, "resize": _resize(plan, sizes, dict(t_spec.get("resize") or {}))}
    student = build_model(s_spec)
    student.kdic_spec = s_spec
    sizes = _sizes_from(plan, student)

    keep = select_channels(plan, energy, sizes)
    index: dict[str, dict[int, Tensor]] = {}
    for leaf in plan.leaves:
        axes = _leaf_index(leaf, _idx(plan, keep, leaf.g_in), _idx(plan, keep, leaf.g_out))
        index.update({f"{leaf.path}.{k}": v for k, v in axes.items() if v})
    for path, g in plan.eb.items():
        idx = _idx(plan, keep, g)
        if idx is not None:
            names = [n for n, _ in view.get_submodule(path).named_parameters()]
            index.update({f"{path}.{n}": {0: idx} for n in names})
    fallback = _copy_from_teacher(view, student, index)

    def as_list(g: int | None) -> list[int] | None:
        idx = _idx(plan, keep, g)
        if idx is None or len(idx) == plan.size[plan.find(g)]:
            return None
        return [int(i) for i in idx]

    info = {
        "width": width,
        "widths": "class" if is_s2c else widths,
        "boundaries": {p: [as_list(g) for g in b] for p, b in plan.boundaries.items()},
        "eb": {p: as_list(g) for p, g in plan.eb.items()},
        "kept_blocks": kept_blocks,
        "stagewise": not fallback,
    }
    if fallback:
        info["not_stagewise"] = (
            f"{t_spec['name']} derives {fallback[0]} (and {len(fallback) - 1} more tensors) "
            "from N, so the class-native student's stages do not fit inside the teacher"
        )
    student.train(False)
    return student, info


def _resize(plan: ChannelPlan, sizes: dict[int, int], resize: dict[str, list[int]]) -> dict:
    """The spec's `resize` entries (leaf path -> channels) of a free-width student."""
    for leaf in plan.leaves:
        new_in = sizes.get(plan.find(leaf.g_in)) if plan.is_free(leaf.g_in) else None
        new_out = sizes.get(plan.find(leaf.g_out)) if plan.is_free(leaf.g_out) else None
        if new_in is None and new_out is None:
            continue
        m = leaf.module
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            shape = [new_in or m.in_channels, new_out or m.out_channels]
            if shape != [m.in_channels, m.out_channels]:
                resize[leaf.path] = shape
        elif new_in != m.beta.numel():
            resize[leaf.path] = [new_in]
    for path, g in plan.eb.items():
        if plan.is_free(g) and sizes[plan.find(g)] != plan.size[plan.find(g)]:
            resize[path] = [sizes[plan.find(g)]]
    return resize


def _sizes_from(plan: ChannelPlan, student: nn.Module) -> dict[int, int]:
    """Sizes of the free groups read off a student skeleton whose module paths match the
    plan's (a group no convolution produces, e.g. a pixel shuffle's output, from the
    group derived from it)."""
    sizes: dict[int, int] = {}
    for leaf in plan.leaves:
        if isinstance(leaf.module, (nn.Conv2d, nn.ConvTranspose2d)) and plan.is_free(leaf.g_out):
            m = student.get_submodule(leaf.path)
            sizes[plan.find(leaf.g_out)] = m.out_channels
    for path, g in plan.eb.items():
        if plan.is_free(g):
            sizes[plan.find(g)] = student.get_submodule(path).channels
    for g, (parts, factor) in plan.derived.items():
        if len(parts) == 1 and g in sizes and parts[0] not in sizes:
            sizes[parts[0]] = sizes[g] // factor
    return {g: n for g, n in sizes.items() if g not in plan.derived}

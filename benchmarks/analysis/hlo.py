"""Reading compiled programs as text: one parser of XLA's HLO module text (computations,
instructions, shapes and bytes), one grouping of kernels and profiled ops (``GROUPS``), the
all-reduces of a data-parallel step and the reduce count of a StableHLO module.

Used by ``gpu_hlo.py report`` (kernels and bytes), ``scaling.py hlo`` (collectives),
``bn_residuals.py`` (StableHLO reduces) and ``profile_step.py`` (the group of each profiled op).
Needs no jax.

Kernels: every kernel-launching instruction reached from the entry computation (fusions,
cuDNN / cuBLAS custom calls, copies, collectives; the bodies of ``call`` - CUDA-graph command
buffers -, ``while``, ``conditional`` and ``async-start`` are walked, each kernel counted
once), with the bytes it reads (its distinct operands' shapes) and writes (its result shape;
a custom call's trailing ``u8`` workspace is left out).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Collection, Iterator


@dataclasses.dataclass
class Instr:
    name: str
    type: str  # the result type text: "bf16[8,4]{1,0}" or a tuple "(f32[2]{0}, u8[0]{0})"
    opcode: str
    operands: list[str]  # operand instruction names
    operand_types: dict[str, str]  # types written inline with the operands (older HLO text)
    attrs: str  # everything after the operand list


@dataclasses.dataclass
class Computation:
    name: str
    entry: bool
    instrs: dict[str, Instr]


@dataclasses.dataclass
class Kernel:
    name: str
    opcode: str
    kind: str  # fusion kind / custom-call target / backend fusion kind
    group: str
    bytes_read: int
    bytes_written: int
    op_name: str
    computation: str


def _dtype_bits(dtype: str) -> int:
    if dtype == "pred":
        return 8
    if dtype in ("token", "opaque") or dtype.startswith("opaque"):
        return 0
    if dtype == "bf16":
        return 16
    if dtype.startswith("f8"):
        return 8
    if dtype.startswith("f6"):
        return 6
    if dtype.startswith("f4"):
        return 4
    m = re.fullmatch(r"[suf](\d+)", dtype) or re.fullmatch(r"c(\d+)", dtype)
    if m:
        return int(m.group(1))
    raise ValueError(f"unknown HLO element type {dtype!r}")


_ARRAY = re.compile(r"\b([a-z][a-z0-9]*)\[([^\]]*)\]")


def array_shapes(type_text: str) -> list[tuple[str, tuple[int, ...]]]:
    """[(element type, dims)] of every array in a (possibly tuple) HLO type text."""
    out = []
    for dtype, dims in _ARRAY.findall(type_text):
        out.append((dtype, tuple(int(d.strip().lstrip("<=")) for d in dims.split(",")
                                 if d.strip())))
    return out


def shape_bytes(type_text: str) -> int:
    return sum(math.ceil(_dtype_bits(dt) * math.prod(dims) / 8)
               for dt, dims in array_shapes(type_text))


def _split_top(text: str, sep: str = ",") -> list[str]:
    """Splits at ``sep`` outside (), [], {} and quotes."""
    parts, depth, start, quote = [], 0, 0, False
    for i, ch in enumerate(text):
        if ch == '"' and (i == 0 or text[i - 1] != "\\"):
            quote = not quote
        elif quote:
            continue
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def _matching(text: str, start: int) -> int:
    """Index of the bracket closing the one at ``text[start]``."""
    pairs, depth, quote = {"(": ")", "{": "}", "[": "]"}, 0, False
    opener = text[start]
    for i in range(start, len(text)):
        ch = text[i]
        if ch == '"' and text[i - 1] != "\\":
            quote = not quote
        elif quote:
            continue
        elif ch == opener:
            depth += 1
        elif ch == pairs[opener]:
            depth -= 1
            if depth == 0:
                return i
    raise ValueError(f"unbalanced {opener!r} in: {text[:200]}")


_HEADER = re.compile(r"^(ENTRY\s+)?%?([\w.\-$]+)\s.*\{\s*$")
_NAME = re.compile(r"%?([\w.\-$]+)\s*=\s*")
_COMMENT = re.compile(r"/\*.*?\*/")


def parse_instruction(line: str) -> Instr | None:
    s = line.strip().removeprefix("ROOT ")
    m = _NAME.match(s)
    if not m:
        return None
    rest = s[m.end():]
    if rest.startswith("("):
        end = _matching(rest, 0)
        type_text, rest = rest[:end + 1], rest[end + 1:].lstrip()
    else:
        type_text, _, rest = rest.partition(" ")
    paren = rest.find("(")
    if paren < 0:
        return None
    opcode = rest[:paren].strip()
    close = _matching(rest, paren)
    operand_text, attrs = rest[paren + 1:close], rest[close + 1:]
    operands, operand_types = [], {}
    if opcode not in ("constant", "parameter", "iota"):
        for piece in _split_top(operand_text):
            piece = _COMMENT.sub("", piece)  # XLA marks every fifth operand /*index=N*/
            om = re.search(r"%([\w.\-$]+)\s*$", piece)
            if not om:
                continue
            operands.append(om.group(1))
            if piece[:om.start()].strip():
                operand_types[om.group(1)] = piece[:om.start()].strip()
    return Instr(m.group(1), type_text, opcode, operands, operand_types, attrs)


def parse_hlo(text: str) -> dict[str, Computation]:
    """Computations of an HLO module text by name; the entry one has ``entry=True``."""
    comps: dict[str, Computation] = {}
    current = None
    for line in text.splitlines():
        if current is None:
            m = _HEADER.match(line)
            if m and not line.startswith((" ", "\t", "HloModule")):
                current = Computation(m.group(2), bool(m.group(1)), {})
            continue
        if line.startswith("}"):
            comps[current.name] = current
            current = None
            continue
        ins = parse_instruction(line)
        if ins is not None:
            current.instrs[ins.name] = ins
    return comps


# Instructions that launch no kernel: buffer views, tuples, markers, the second half of
# async pairs. Control flow (call, while, conditional, async-start) is walked into instead.
_FREE = {"parameter", "constant", "get-tuple-element", "tuple", "bitcast", "opt-barrier",
         "after-all", "add-dependency", "domain", "partition-id", "replica-id",
         "get-dimension-size", "all-reduce-done", "all-gather-done", "collective-permute-done",
         "copy-done", "async-done", "async-update", "send-done", "recv-done"}
_DESCEND = {"call": ("to_apply",), "while": ("condition", "body"),
            "conditional": ("branch_computations", "true_computation", "false_computation"),
            "async-start": ("calls",)}
_COLLECTIVES = {"all-reduce", "all-reduce-start", "all-gather", "all-gather-start",
                "reduce-scatter", "collective-permute", "collective-permute-start", "all-to-all",
                "ragged-all-to-all", "collective-broadcast", "send", "recv"}
_VIEW_OPS = {"parameter", "bitcast", "reshape", "constant", "tuple", "get-tuple-element"}

GROUPS = ("conv forward", "conv backward input", "conv backward filter", "gemm",
          "reduction fusions", "pooling / scatter fusions", "transpose fusions",
          "elementwise fusions", "copies", "collectives", "other")


def _called(attrs: str, key: str) -> list[str]:
    m = re.search(rf"\b{key}=(\{{[^}}]*\}}|%?[\w.\-$]+)", attrs)
    if not m:
        return []
    return [n.strip().lstrip("%") for n in m.group(1).strip("{}").split(",") if n.strip()]


def _attr(attrs: str, key: str) -> str:
    m = re.search(rf'\b{key}=("[^"]*"|[\w.\-$%]+)', attrs)
    return m.group(1).strip('"').replace("\\'", "'") if m else ""


def _fused_opcodes(comps: dict[str, Computation], name: str, seen=None) -> set[str]:
    """Opcodes inside a fused computation, nested fusions included."""
    seen = set() if seen is None else seen
    if name in seen or name not in comps:
        return set()
    seen.add(name)
    ops = set()
    for ins in comps[name].instrs.values():
        ops.add(ins.opcode)
        if ins.opcode == "fusion":
            for callee in _called(ins.attrs, "calls"):
                ops |= _fused_opcodes(comps, callee, seen)
    return ops


def _custom_call_group(target: str) -> str:
    t = target.lower()
    if "backwardfilter" in t or "bw-filter" in t:
        return "conv backward filter"
    if "backwardinput" in t or "bw-input" in t:
        return "conv backward input"
    if t.startswith("__cudnn$conv"):
        return "conv forward"
    if "gemm" in t or "matmul" in t or "cublas" in t:
        return "gemm"
    return "other"


def _fusion_group(ops: set[str], kind: str) -> str:
    if ops & {"dot", "ragged-dot", "scaled-dot"} or "gemm" in kind:
        return "gemm"
    if "convolution" in ops:
        return "conv forward"
    if "reduce" in ops:
        return "reduction fusions"
    if ops & {"reduce-window", "select-and-scatter", "scatter"}:
        return "pooling / scatter fusions"
    if "transpose" in ops:
        return "transpose fusions"
    if "copy" in ops and ops <= _VIEW_OPS | {"copy"}:
        return "copies"
    return "elementwise fusions"


def classify(ins: Instr, comps: dict[str, Computation]) -> tuple[str, str]:
    """(group, kind) of one kernel-launching instruction."""
    op = ins.opcode
    if op == "custom-call":
        target = _attr(ins.attrs, "custom_call_target")
        return _custom_call_group(target), target
    if op == "fusion":
        kind = _attr(ins.attrs, "kind")
        backend = re.search(r'"fusion_backend_config":\{"kind":"([^"]+)"', ins.attrs)
        if backend:
            kind = f"{kind}:{backend.group(1)}"
        ops = set()
        for callee in _called(ins.attrs, "calls"):
            ops |= _fused_opcodes(comps, callee)
        if backend and backend.group(1).startswith("__cudnn"):
            return ("conv forward" if "convolution" in ops else
                    "gemm" if "dot" in ops else "other"), kind
        return _fusion_group(ops, kind), kind
    if op in ("copy", "copy-start"):
        return "copies", op
    if op == "transpose":
        return "transpose fusions", op
    if op in _COLLECTIVES:
        return "collectives", op
    if op in ("dot", "ragged-dot"):
        return "gemm", op
    if op == "convolution":
        return "conv forward", op
    if op == "reduce":
        return "reduction fusions", op
    if op in ("reduce-window", "select-and-scatter", "scatter"):
        return "pooling / scatter fusions", op
    return "other", op


def _written_bytes(ins: Instr) -> int:
    if ins.opcode == "copy-start":  # (destination, source, context): the copy writes one
        arrays = array_shapes(ins.type)
        return shape_bytes(f"{arrays[0][0]}[{','.join(map(str, arrays[0][1]))}]") if arrays else 0
    if ins.opcode == "custom-call" and ins.type.startswith("("):
        parts = _split_top(ins.type[1:-1])
        if len(parts) > 1 and parts[-1].startswith("u8["):  # cuDNN / cuBLAS workspace
            parts = parts[:-1]
        return sum(shape_bytes(p) for p in parts)
    return shape_bytes(ins.type)


def entry_kernels(comps: dict[str, Computation]) -> list[Kernel]:
    """Every kernel-launching instruction reached from the entry computation, in order."""
    entry = next((c for c in comps.values() if c.entry), None)
    if entry is None:
        raise ValueError("no ENTRY computation in this HLO text")
    out: list[Kernel] = []

    def walk(comp: Computation, seen: tuple[str, ...]) -> None:
        for ins in comp.instrs.values():
            if ins.opcode in _FREE:
                continue
            if ins.opcode in _DESCEND:
                for key in _DESCEND[ins.opcode]:
                    for callee in _called(ins.attrs, key):
                        if callee in comps and callee not in seen:
                            walk(comps[callee], (*seen, callee))
                continue
            group, kind = classify(ins, comps)
            read = 0
            for name in dict.fromkeys(ins.operands):  # each distinct operand once
                t = ins.operand_types.get(name) or (
                    comp.instrs[name].type if name in comp.instrs else "")
                read += shape_bytes(t)
            out.append(Kernel(ins.name, ins.opcode, kind, group, read, _written_bytes(ins),
                              _attr(ins.attrs, "op_name"), comp.name))

    walk(entry, (entry.name,))
    return out


# A profiled op that the program's HLO does not name (a CPU thunk, a runtime memcpy) is
# grouped by its name alone; XLA's names say what a kernel is often enough.
_NAME_GROUPS = [
    ("conv backward filter", re.compile(r"bw-filter|backward.?filter|wgrad", re.IGNORECASE)),
    ("conv backward input", re.compile(r"bw-input|backward.?input|dgrad", re.IGNORECASE)),
    # "conv" but not "convert" (XLA names dtype-conversion fusions "..._convert_fusion").
    ("conv forward", re.compile(r"cudnn-conv|conv(?!ert)|fprop", re.IGNORECASE)),
    ("gemm", re.compile(r"gemm|cublas|dot", re.IGNORECASE)),
    # before "scatter" and "reduce": reduce-scatter and all-reduce are collectives
    ("collectives", re.compile(r"all-reduce|all-gather|reduce-scatter|all-to-all|collective|"
                               r"nccl", re.IGNORECASE)),
    ("pooling / scatter fusions", re.compile(r"reduce-window|scatter", re.IGNORECASE)),
    ("reduction fusions", re.compile(r"reduce", re.IGNORECASE)),
    ("transpose fusions", re.compile(r"transpose", re.IGNORECASE)),
    ("copies", re.compile(r"copy|memcpy|memset", re.IGNORECASE)),
    ("elementwise fusions", re.compile(r"fusion", re.IGNORECASE)),
]


def group_of_name(name: str) -> str:
    """The group (``GROUPS``) of an op known only by its name."""
    for group, pattern in _NAME_GROUPS:
        if pattern.search(name):
            return group
    return "other"


def op_grouper(hlo_text: str | None) -> Callable[[str], str]:
    """``group(op name)`` for a profiled program: the kernel's group from the program's HLO
    where it names the op (``classify``), else ``group_of_name``."""
    groups = {} if not hlo_text else {k.name: k.group for k in entry_kernels(parse_hlo(hlo_text))}
    return lambda name: groups.get(name) or group_of_name(name)


def instructions(text: str, opcodes: Collection[str]) -> Iterator[Instr]:
    """Every instruction with one of ``opcodes``, wherever it stands in ``text`` (any
    computation of a module, or loose instruction lines)."""
    for line in text.splitlines():
        if any(f"{op}(" in line for op in opcodes):  # cheap test before parsing
            ins = parse_instruction(line)
            if ins is not None and ins.opcode in opcodes:
                yield ins


def collective_summary(hlo_text: str) -> dict[str, int]:
    """All-reduce instructions of a compiled HLO module: how many, how many operands, bytes,
    and the ones that carry rank >= 2 arrays (weight gradients, not BatchNorm statistics)."""
    ops = []
    for ins in instructions(hlo_text, ("all-reduce", "all-reduce-start")):
        arrays = array_shapes(ins.type)
        ops.append({
            "operands": len(arrays),
            "bytes": shape_bytes(ins.type),
            "rank2_elements": sum(math.prod(dims) for _, dims in arrays if len(dims) >= 2),
        })
    return {
        "all_reduce_ops": len(ops),
        "all_reduce_operands": sum(o["operands"] for o in ops),
        "all_reduce_bytes": sum(o["bytes"] for o in ops),
        "ops_with_weight_gradients": sum(1 for o in ops if o["rank2_elements"]),
        "weight_gradient_elements": sum(o["rank2_elements"] for o in ops),
        "largest_op_bytes": max((o["bytes"] for o in ops), default=0),
    }


_FUNC = re.compile(r"func\.func\s+(?:public\s+|private\s+)?@([\w.$-]+)")
_CALL = re.compile(r"call @([\w.$-]+)")
_REDUCE = re.compile(r"stablehlo\.reduce(?![\w])")


def count_stablehlo_reduces(stablehlo: str) -> int:
    """stablehlo.reduce ops reachable from @main, a function called n times counted n times."""
    bodies: dict[str, str] = {}
    starts = [(m.start(), m.group(1)) for m in _FUNC.finditer(stablehlo)]
    for (start, name), (end, _) in zip(starts, starts[1:] + [(len(stablehlo), "")]):
        bodies[name] = stablehlo[start:end]
    memo: dict[str, int] = {}

    def total(name: str) -> int:
        if name not in memo:
            body = bodies.get(name, "")
            memo[name] = len(_REDUCE.findall(body)) + sum(total(c) for c in _CALL.findall(body))
        return memo[name]

    return total("main")

"""Evidence about the CUDA kernels that needs no GPU: resources, hot loops and time estimates.

    python bench/gpu_static.py [--out bench/results] [--arch 90a --arch 80]

For every ``csrc/cuda/*.cu`` and every target architecture this compiles the file to a cubin
with ``ptxas -v`` and reads, per kernel (every template instantiation):
- registers, spill stores/loads, stack frame, static shared memory (ptxas's report), and the
  occupancy the registers allow (resident warps per SM out of 64; dynamic shared memory and
  block size can lower it further and are not known statically);
- every innermost loop of its SASS (a backward branch to an address inside the function):
  instructions per iteration, global-load bytes per thread per iteration, local-memory
  instructions (LDL/STL: a register array indexed at run time), and SASS instructions per
  element loaded (elements of the kernel's logit/weight dtype, taken from its template
  arguments).

Then, for the benchmark shapes of the issues, it sets an issue-time estimate (SASS
instructions per element of the hottest streaming loop x elements / (32 lanes x 4
schedulers x SMs x clock)) beside the memory time of the same bytes. These are ESTIMATES
from the instruction stream: they ignore latency, dependencies and divergence; a lent GPU
replaces them with measurements (bench/gpu_session.sh).

Writes ``gpu-static.json`` and ``gpu-static.md`` under ``--out`` and exits 1 if any kernel
spills (so ``make gpu-static`` fails on a spill).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# H200 SXM (HOPPER.md / H200.md): 132 SMs, 1.98 GHz boost, 4 warp schedulers per SM issuing
# one warp instruction per clock each, 4.8 TB/s HBM3e (datasheet; ~4.3 TB/s measured copy).
H200 = {"sms": 132, "clock_hz": 1.98e9, "schedulers": 4, "hbm_bytes_per_s": 4.8e12}
MAX_WARPS_PER_SM = 64
REGISTERS_PER_SM = 65536
REGISTER_ALLOCATION_UNIT = 256  # registers are allocated per warp in units of 256


@dataclass
class Loop:
    instructions: int
    global_load_bytes: int  # per thread per iteration
    local_memory_instructions: int
    instructions_per_element: float | None  # None when the loop loads nothing from global


@dataclass
class Kernel:
    file: str
    arch: str
    name: str  # demangled
    registers: int
    spill_stores: int
    spill_loads: int
    stack_bytes: int
    static_smem_bytes: int
    warps_per_sm_by_registers: int
    element_bytes: int | None
    loops: list[Loop] = field(default_factory=list)

    def streaming_loop(self, best: bool) -> Loop | None:
        """Among the loops that load from global memory, the one with the fewest (best: the
        vector path an aligned shape takes) or the most (worst: e.g. a scalar fallback) SASS
        instructions per element."""
        streaming = [lp for lp in self.loops if lp.instructions_per_element is not None]
        pick = min if best else max
        return pick(streaming, key=lambda lp: lp.instructions_per_element, default=None)


def find_tool(name: str) -> str:
    """nvcc's tools from PATH or CUDA_HOME; cuobjdump also from Triton's package (this
    machine's CUDA toolkit is partial and ships none)."""
    found = shutil.which(name)
    if found:
        return found
    for base in filter(None, [os.environ.get("CUDA_HOME"), "/usr/local/cuda"]):
        path = os.path.join(base, "bin", name)
        if os.path.exists(path):
            return path
    try:
        import triton

        path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)
        if os.path.exists(path):
            return path
    except ImportError:
        pass
    sys.exit(f"gpu_static: {name} not found (set CUDA_HOME, or install triton for cuobjdump)")


def demangle(names: list[str]) -> dict[str, str]:
    out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True, check=True).stdout
    return dict(zip(names, out.splitlines()))


def element_bytes(demangled: str) -> int | None:
    """Bytes of the kernel's first floating-point template argument (its logit/weight type)."""
    args = demangled[demangled.find("<") :] if "<" in demangled else ""
    for token, size in (("__nv_bfloat16", 2), ("__half", 2), ("float", 4)):
        if token in args:
            return size
    return None


PTXAS_FUNCTION = re.compile(r"Compiling entry function '(\S+)' for '(sm_\w+)'")
PTXAS_STACK = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
PTXAS_USAGE = re.compile(r"Used (\d+) registers(?:.*?(\d+) bytes smem)?")


def parse_ptxas(report: str) -> dict[str, dict]:
    kernels, current = {}, None
    for line in report.splitlines():
        if m := PTXAS_FUNCTION.search(line):
            current = kernels.setdefault(m.group(1), {"stack": 0, "spill_stores": 0, "spill_loads": 0, "smem": 0})
        elif current is not None and (m := PTXAS_STACK.search(line)):
            current.update(stack=int(m.group(1)), spill_stores=int(m.group(2)), spill_loads=int(m.group(3)))
        elif current is not None and (m := PTXAS_USAGE.search(line)):
            current.update(registers=int(m.group(1)), smem=int(m.group(2) or 0))
    return kernels


SASS_FUNCTION = re.compile(r"^\s+Function : (\S+)")
SASS_INSTRUCTION = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(.*?);")
SASS_BRANCH = re.compile(r"\bBRA\b.*?(0x[0-9a-f]+)")
SASS_GLOBAL_LOAD = re.compile(r"\bLDG(?!DEPBAR)\S*")  # LDG, LDGSTS (cp.async); LDGDEPBAR loads nothing


def load_bytes(opcode: str) -> int:
    for width, size in ((".128", 16), (".64", 8), (".U16", 2), (".S16", 2), (".U8", 1), (".S8", 1)):
        if width in opcode:
            return size
    return 4


def parse_sass(sass: str) -> dict[str, list[tuple[int, str]]]:
    functions, current = {}, None
    for line in sass.splitlines():
        if m := SASS_FUNCTION.match(line):
            current = functions.setdefault(m.group(1), [])
        elif current is not None and (m := SASS_INSTRUCTION.search(line)):
            current.append((int(m.group(1), 16), m.group(2).strip()))
    return functions


def innermost_loops(code: list[tuple[int, str]], elem: int | None) -> list[Loop]:
    """Loops are backward branches; keep those that contain no other loop."""
    spans = []
    for address, text in code:
        m = SASS_BRANCH.search(text)
        if m and int(m.group(1), 16) <= address:
            spans.append((int(m.group(1), 16), address))
    inner = [s for s in spans if not any(o != s and s[0] <= o[0] and o[1] <= s[1] for o in spans)]
    loops = []
    for start, end in inner:
        body = [text for address, text in code if start <= address <= end]
        loads = [SASS_GLOBAL_LOAD.search(t).group(0) for t in body if SASS_GLOBAL_LOAD.search(t)]
        nbytes = sum(load_bytes(op) for op in loads)
        local = sum(1 for t in body if re.search(r"\b(LDL|STL)\b", t))
        per_element = len(body) / (nbytes / elem) if nbytes and elem else None
        loops.append(Loop(len(body), nbytes, local, per_element))
    return loops


def warps_by_registers(registers: int) -> int:
    per_warp = -(-registers * 32 // REGISTER_ALLOCATION_UNIT) * REGISTER_ALLOCATION_UNIT
    return min(MAX_WARPS_PER_SM, REGISTERS_PER_SM // max(per_warp, 1))


def analyse(source: str, arch: str, nvcc: str, cuobjdump: str, tmp: str) -> list[Kernel]:
    cubin = os.path.join(tmp, f"{os.path.basename(source)}.{arch}.cubin")
    cmd = [nvcc, "-std=c++17", "-O3", "--expt-relaxed-constexpr", "-cubin", "-Xptxas", "-v",
           f"-gencode=arch=compute_{arch},code=sm_{arch}", "-I", os.path.join(ROOT, "csrc", "include"),
           "-I", os.path.join(ROOT, "csrc"), "-DDSPARK_WITH_CUDA=1", "-o", cubin, source]
    report = subprocess.run(cmd, capture_output=True, text=True)
    if report.returncode != 0:
        sys.exit(f"gpu_static: nvcc failed on {source} for sm_{arch}:\n{report.stderr}")
    resources = parse_ptxas(report.stderr)
    sass = parse_sass(subprocess.run([cuobjdump, "-sass", cubin], capture_output=True, text=True, check=True).stdout)
    names = demangle(sorted(resources))
    kernels = []
    for mangled, res in sorted(resources.items()):
        name = names[mangled]
        elem = element_bytes(name)
        kernels.append(Kernel(
            file=os.path.relpath(source, ROOT), arch=f"sm_{arch}", name=name, registers=res.get("registers", 0),
            spill_stores=res["spill_stores"], spill_loads=res["spill_loads"], stack_bytes=res["stack"],
            static_smem_bytes=res["smem"], warps_per_sm_by_registers=warps_by_registers(res.get("registers", 0)),
            element_bytes=elem, loops=innermost_loops(sass.get(mangled, []), elem)))
    return kernels


# Benchmark shapes of issue 11, as (label, kernel-name pattern, elements streamed, bytes moved):
# the hot loop's instructions per element times the elements gives the issue estimate.
def estimate_shapes() -> list[tuple[str, str, float, float]]:
    R, G, V = 64, 7, 151936
    rows = R * (G + 1) + R * G  # target rows + draft rows, each read once (floor)
    verify = ("verify_chain R=64 γ=7 V=151936 bf16 (row pass)", r"row_pass_kernel<__nv_bfloat16, __nv_bfloat16>",
              rows * V, rows * V * 2.0)
    tree_rows = 64 * 16
    tree = ("verify_tree R=64 M=16 V=151936 bf16 (node rows)", r"verify_tree_split_kernel<__nv_bfloat16, __nv_bfloat16>",
            2 * tree_rows * V, 2 * tree_rows * V * 2.0)
    L, Hkv, Dh = 4096, 8, 128
    # The kernel that serves this shape by default (DSPARK_BLOCK_ATTENTION_KERNEL unset).
    attn = ("block_attention R=64 ctx=4096 Hkv=8 Dh=128 bf16 (KV read)",
            r"block_attention_pipelined_kernel<__nv_bfloat16, 128>",
            2 * R * (L + G) * Hkv * Dh, 2 * R * (L + G) * Hkv * Dh * 2.0)
    r = 256
    # The default (tensor-core) instantiation; its streaming loops are the staging of w2 and U.
    markov = ("markov_draft R=1 γ=7 V=151936 r=256 bf16 (w2 per position)",
              r"markov_draft_kernel<__nv_bfloat16, \(dspark::cuda::MarkovKernel\)0>",
              G * V * r, G * (V * r + 2 * V) * 2.0)
    return [verify, tree, attn, markov]


def estimates(kernels: list[Kernel]) -> list[dict]:
    issue_rate = 32 * H200["schedulers"] * H200["sms"] * H200["clock_hz"]  # thread-instructions per second
    rows = []
    for label, pattern, elements, nbytes in estimate_shapes():
        candidates = [k for k in kernels if k.arch == "sm_90a" and re.search(pattern, k.name)
                      and k.streaming_loop(best=True)]
        memory_us = nbytes / H200["hbm_bytes_per_s"] * 1e6
        if not candidates:
            rows.append({"shape": label, "kernel": None, "memory_us": memory_us})
            continue
        k = max(candidates, key=lambda c: c.streaming_loop(best=True).instructions_per_element)
        per_element = k.streaming_loop(best=True).instructions_per_element
        issue_us = per_element * elements / issue_rate * 1e6
        rows.append({"shape": label, "kernel": k.name, "instructions_per_element": per_element,
                     "worst_path_instructions_per_element": k.streaming_loop(best=False).instructions_per_element,
                     "issue_us": issue_us, "memory_us": memory_us,
                     "bound": "issue" if issue_us > memory_us else "memory",
                     "estimate_over_floor": max(issue_us, memory_us) / memory_us})
    return rows


def short_name(name: str) -> str:
    """A kernel's name for the table: without the namespaces and the parameter list, template
    arguments kept (they tell the instantiations apart, e.g. the MarkovKernel variant)."""
    name = name.removeprefix("void ").replace("dspark::cuda::", "").replace("(anonymous namespace)::", "")
    depth = 0
    for i, c in enumerate(name):  # cut the parameter list: the first "(" outside template brackets
        depth += c == "<"
        depth -= c == ">"
        if c == "(" and depth == 0:
            name = name[:i]
            break
    return name if len(name) < 90 else name[:87] + "..."


def markdown(kernels: list[Kernel], est: list[dict]) -> str:
    lines = ["# CUDA kernels without a GPU: static report (`make gpu-static`)", "",
             "ptxas resources per kernel and architecture, innermost SASS loops, and issue-time vs memory-time",
             "ESTIMATES for an H200 (132 SMs, 1.98 GHz, 4.8 TB/s). Estimates, not measurements.", "",
             "Loops: innermost SASS loops that load from global memory; `best` is the one with the fewest",
             "instructions per element loaded (the vector path), `worst` the most (e.g. the scalar fallback).", "",
             "| file | arch | kernel | regs | spill st/ld | stack | smem | warps/SM (regs) | loops | LDL/STL in loops | "
             "best: instr, LDG B/iter, instr/elem | worst: instr/elem |", "|" + " --- |" * 12]
    for k in kernels:
        best, worst = k.streaming_loop(best=True), k.streaming_loop(best=False)
        local = sum(lp.local_memory_instructions for lp in k.loops)
        loop = (f"{len(k.loops)} | {local} | {best.instructions}, {best.global_load_bytes}, "
                f"{best.instructions_per_element:.1f} | {worst.instructions_per_element:.1f}") if best else \
            f"{len(k.loops)} | {local} | - | -"
        name = short_name(k.name)
        lines.append(f"| {k.file} | {k.arch} | `{name}` | {k.registers} | {k.spill_stores}/{k.spill_loads} | "
                     f"{k.stack_bytes} | {k.static_smem_bytes} | {k.warps_per_sm_by_registers} | {loop} |")
    lines += ["", "## Issue time vs memory time at the issue's benchmark shapes (H200, estimates)", "",
              "Issue time = best-path instructions per element x elements / (32 x 4 x 132 x 1.98 GHz);",
              "memory time = bytes / 4.8 TB/s (the floor). Both are estimates.", "",
              "| shape | kernel | instr/elem (worst path) | issue µs | memory µs | bound | estimate / floor |",
              "|" + " --- |" * 7]
    for e in est:
        if e["kernel"] is None:
            lines.append(f"| {e['shape']} | (no streaming loop found) | - | - | {e['memory_us']:.1f} | - | - |")
            continue
        lines.append(f"| {e['shape']} | `{short_name(e['kernel'])}` | {e['instructions_per_element']:.1f} "
                     f"({e['worst_path_instructions_per_element']:.1f}) | "
                     f"{e['issue_us']:.1f} | {e['memory_us']:.1f} | {e['bound']} | {e['estimate_over_floor']:.2f} |")
    spills = [k for k in kernels if k.spill_stores or k.spill_loads]
    lines += ["", f"Kernels that spill: {len(spills)}."]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "results"))
    parser.add_argument("--arch", action="append", help="e.g. 90a, 80 (default both)")
    parser.add_argument("--only", nargs="*", help="file stems to analyse, e.g. verify_chain (default all)")
    args = parser.parse_args()
    archs = args.arch or ["90a", "80"]
    nvcc, cuobjdump = find_tool("nvcc"), find_tool("cuobjdump")
    sources = sorted(os.path.join(ROOT, "csrc", "cuda", f) for f in os.listdir(os.path.join(ROOT, "csrc", "cuda"))
                     if f.endswith(".cu") and (not args.only or f[:-3] in args.only))
    kernels = []
    with tempfile.TemporaryDirectory() as tmp:
        for source in sources:
            for arch in archs:
                kernels += analyse(source, arch, nvcc, cuobjdump, tmp)
                print(f"gpu_static: {os.path.relpath(source, ROOT)} sm_{arch}", flush=True)
    est = estimates(kernels)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "gpu-static.json"), "w") as f:
        json.dump({"device_model": H200, "kernels": [asdict(k) for k in kernels], "estimates": est}, f, indent=1)
    report = markdown(kernels, est)
    with open(os.path.join(args.out, "gpu-static.md"), "w") as f:
        f.write(report)
    print(report[report.find("## Issue time"):])
    spills = [k.name for k in kernels if k.spill_stores or k.spill_loads]
    if spills:
        print("gpu_static: kernels that spill:\n  " + "\n  ".join(spills))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

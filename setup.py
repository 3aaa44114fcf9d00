"""Builds ``trpo_torchrl._C``: the C++ ops always, the CUDA ops when a toolkit is found.

Switches (environment variables):

* ``TRPO_TORCHRL_NO_EXTENSION=1`` – build nothing; the package runs on its pure-PyTorch path.
* ``USE_CUDA=0`` – C++ only, even when a CUDA toolkit is present.
* ``FORCE_CUDA=1`` – CUDA sources are required (fail if no toolkit is found).
* ``CUDA_HOME`` – the toolkit folder (the one whose ``bin/`` holds the real ``nvcc``).
* ``TORCH_CUDA_ARCH_LIST`` – defaults to ``9.0`` (H100/H200) when unset and no GPU is visible.
* ``NVCC_FLAGS`` / ``CXX_FLAGS`` – extra compiler flags, space separated.

Whether CUDA is built is decided from the toolkit and torch's CUDA version, never from
``torch.cuda.is_available()``, so a machine without a GPU still compiles the CUDA code.
"""

from __future__ import annotations

import glob
import os
import shutil
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).parent.resolve()
CSRC = ROOT / "csrc"


def _flag(name: str, default: str = "") -> str:
    return os.environ.get(name, default).strip().lower()


def _find_cuda_home() -> str | None:
    """The CUDA toolkit folder, or None.

    ``nvcc`` on PATH may be a wrapper script outside the toolkit (torch would then guess its
    parent folder and fail to link), so a folder counts only if it holds ``bin/nvcc`` and a
    ``libcudart`` under ``lib64`` or ``lib``.
    """
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(str(Path(nvcc).resolve().parent.parent))
    for cand in candidates:
        if not cand:
            continue
        home = Path(cand)
        has_nvcc = (home / "bin" / "nvcc").exists()
        has_rt = any(glob.glob(str(home / lib / "libcudart*")) for lib in ("lib64", "lib"))
        if has_nvcc and has_rt:
            return str(home.resolve())
    return None


def _extensions():
    if _flag("TRPO_TORCHRL_NO_EXTENSION") in ("1", "true", "yes"):
        print("trpo_torchrl: TRPO_TORCHRL_NO_EXTENSION set, building no compiled ops")
        return [], {}

    cuda_home = None
    if _flag("USE_CUDA", "1") not in ("0", "false", "no"):
        cuda_home = _find_cuda_home()
        if cuda_home:
            # must be set before torch.utils.cpp_extension is imported: it reads it once
            os.environ["CUDA_HOME"] = cuda_home

    import torch
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    force_cuda = _flag("FORCE_CUDA") in ("1", "true", "yes")
    with_cuda = cuda_home is not None and torch.version.cuda is not None
    if force_cuda and not with_cuda:
        raise RuntimeError(
            "FORCE_CUDA=1 but CUDA cannot be built: "
            f"toolkit={cuda_home!r}, torch.version.cuda={torch.version.cuda!r} "
            "(set CUDA_HOME to the toolkit folder and install a CUDA build of torch)"
        )

    sources = sorted(str(p.relative_to(ROOT)) for p in CSRC.glob("*.cpp"))
    cxx_flags = ["-O3"] + os.environ.get("CXX_FLAGS", "").split()
    extra = {"cxx": cxx_flags}
    define_macros = []
    ext_cls = CppExtension
    if with_cuda:
        sources += sorted(str(p.relative_to(ROOT)) for p in (CSRC / "cuda").glob("*.cu"))
        extra["nvcc"] = ["-O3", "-lineinfo"] + os.environ.get("NVCC_FLAGS", "").split()
        define_macros.append(("TRPO_TORCHRL_WITH_CUDA", None))
        ext_cls = CUDAExtension
        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
            # torch would otherwise compile for every architecture it knows, several times slower
            os.environ["TORCH_CUDA_ARCH_LIST"] = "9.0"

    print(
        "trpo_torchrl build: "
        f"torch={torch.__version__} cuda={'yes' if with_cuda else 'no'} "
        f"CUDA_HOME={cuda_home} TORCH_CUDA_ARCH_LIST={os.environ.get('TORCH_CUDA_ARCH_LIST')} "
        f"sources={sources} flags={extra}"
    )
    ext = ext_cls(
        name="trpo_torchrl._C",
        sources=sources,
        include_dirs=[str(CSRC)],
        extra_compile_args=extra,
        define_macros=define_macros,
        py_limited_api=True,
    )
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _extensions()
setup(
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    options={"bdist_wheel": {"py_limited_api": "cp310"}} if ext_modules else {},
)

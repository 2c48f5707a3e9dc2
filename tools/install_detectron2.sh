#!/usr/bin/env bash
# Install Detectron2 and Mask2Former (facebookresearch) into a Python environment, from their sources.
#
#   bash tools/install_detectron2.sh [PYTHON]        # PYTHON defaults to .venv/bin/python
#
# Sources: a local archive (.tar.gz/.tgz/.tar/.zip), a local folder, or an archive URL (downloaded once
# into the cache). Unset, the GitHub archives at the commits pinned below.
#   DETECTRON2_SOURCE   facebookresearch/detectron2
#   MASK2FORMER_SOURCE  facebookresearch/Mask2Former
#
# Detectron2 is built into a wheel against the installed torch (pip --no-build-isolation; its C++ ops, and
# its CUDA ops where torch has CUDA, a GPU is visible or FORCE_CUDA=1, and a CUDA toolkit is found), checked
# by importing detectron2._C, and cached in ${REFINE_HOOKS_CACHE:-~/.cache/refine_hooks}/wheels/
# detectron2-<source key>-torch<version>-<cpu|cuda build>/ for the next run.
#
# Mask2Former is not a pip package: its INSTALL.md runs it from a clone of the repository. So its
# requirements.txt is installed and a path entry, <site-packages>/refine_hooks_mask2former.pth, puts the
# tree on sys.path: `import mask2former` works from anywhere and its configs/ stay beside the package.
# An archive (or URL) is unpacked into <cache>/src/Mask2Former-<key>; a folder is used where it is (like
# `pip install -e`). Remove the .pth file to uninstall it.
# Its MultiScaleDeformableAttention op builds only with CUDA. On a CUDA machine it is built (as its
# INSTALL.md says; FORCE_CUDA=1 builds without a GPU) and cached like Detectron2, with one change for
# torch >= 2.6 in the build copy (see build_msda_wheel). Elsewhere Mask2Former still imports the op
# unconditionally, so tools/mask2former_cpu_op (a module whose calls raise, as the op does for CPU
# tensors) is installed under the op's name, and Mask2Former's MSDeformAttn runs its own pure-PyTorch
# ms_deform_attn_core_pytorch.
#
# torch, torchvision and numpy are pinned to their installed versions: pip never replaces them.
# Idempotent: a second run only checks. Each failure stops the script with a sentence saying what failed.
set -euo pipefail

PY="${1:-.venv/bin/python}"
DETECTRON2_COMMIT="02b5c4e295e990042a714712c21dc79b731e8833"
MASK2FORMER_COMMIT="9b0651c6c1d5b3af2e6da0589b719c514ec0d69a"
DETECTRON2_URL="https://github.com/facebookresearch/detectron2/archive/$DETECTRON2_COMMIT.tar.gz"
MASK2FORMER_URL="https://github.com/facebookresearch/Mask2Former/archive/$MASK2FORMER_COMMIT.tar.gz"
CACHE="${REFINE_HOOKS_CACHE:-$HOME/.cache/refine_hooks}"
HERE="$(cd "$(dirname "$0")" && pwd)"
PTH_NAME="refine_hooks_mask2former.pth"

say() { echo "[install_detectron2] $*"; }
warn() { echo "[install_detectron2] WARNING: $*" >&2; }
die() { echo "[install_detectron2] ERROR: $*" >&2; exit 1; }

[ -x "$PY" ] || command -v "$PY" >/dev/null 2>&1 || die "python interpreter '$PY' not found"
# Absolute path (builds run in other directories); not resolving symlinks keeps a venv's python.
case "$PY" in */*) PY="$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")" ;; esac
"$PY" -c "import torch" 2>/dev/null || die "torch does not import in $PY; install the project first (pip install -e .)"

WORK="$(mktemp -d -t install_detectron2.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT

# --- what the installed torch can build -------------------------------------------------------------------
# BUILD is "cpu" or "cu<version>-<GPU architectures>": part of every wheel's cache key, with torch's version.
BUILD_FACTS="$("$PY" - 2>"$WORK/build-facts.err" <<'EOF'
import os, shlex, torch
from torch.utils.cpp_extension import CUDA_HOME

force = os.environ.get("FORCE_CUDA", "0") == "1"
wanted = force or (torch.version.cuda is not None and torch.cuda.is_available())
build, problem, note = "cpu", "", ""
if force and torch.version.cuda is None:
    problem = f"FORCE_CUDA=1 but torch {torch.__version__} is a build without CUDA"
elif wanted and CUDA_HOME is None:
    if force:
        problem = "FORCE_CUDA=1 but no CUDA toolkit was found (set CUDA_HOME)"
    else:
        note = ("a GPU is visible but no CUDA toolkit was found (nvcc, CUDA_HOME): Detectron2 gets CPU ops only and "
                "Mask2Former its pure-PyTorch attention; install the toolkit of CUDA "
                f"{torch.version.cuda} and rerun for CUDA ops")
elif wanted:
    archs = os.environ.get("TORCH_CUDA_ARCH_LIST") or ";".join(
        "{}.{}".format(*torch.cuda.get_device_capability(i)) for i in range(torch.cuda.device_count()))
    build = f"cu{torch.version.cuda}-sm" + "_".join(sorted(set(archs.replace(" ", ";").split(";")) - {""}))
for name, value in (("TORCH_VERSION", torch.__version__), ("BUILD", build), ("BUILD_PROBLEM", problem),
                    ("BUILD_NOTE", note)):
    print(f"{name}={shlex.quote(value)}")
EOF
)" || { cat "$WORK/build-facts.err" >&2; die "could not ask torch in $PY what it can build (see above)"; }
eval "$BUILD_FACTS"
[ -z "$BUILD_PROBLEM" ] || die "$BUILD_PROBLEM"
[ -z "$BUILD_NOTE" ] || warn "$BUILD_NOTE"
BUILD_TAG="torch$(echo "$TORCH_VERSION" | tr '+' '_')-$(echo "$BUILD" | tr '.+' '__')"
say "building against torch $TORCH_VERSION ($BUILD)"

# Pin what pip must not touch to the versions already installed.
CONSTRAINTS="$WORK/constraints.txt"
"$PY" "$HERE/pin_installed.py" >"$CONSTRAINTS" || die "could not read the installed versions of torch, torchvision, numpy"
pip_install() { "$PY" -m pip install --disable-pip-version-check -c "$CONSTRAINTS" "$@"; }

# Prints the local archive or folder of a source (downloading a URL once), or stops saying why not.
fetch_source() {
    local what="$1" source="$2" variable="$3" path
    if ! path="$("$PY" "$HERE/source_archive.py" fetch "$source" "$CACHE/downloads")"; then
        die "cannot get the $what source '$source' (see above); set $variable to a local archive or folder of it"
    fi
    echo "$path"
}

# Says which commit a source is, warning when it is not the pinned one.
report_source() {
    local what="$1" path="$2" commit="$3" pinned="$4"
    if [ "$commit" = "-" ]; then
        say "$what source: $path (no commit recorded in it; pinned: ${pinned:0:12})"
    elif [ "$commit" != "$pinned" ]; then
        warn "$what source $path is commit ${commit:0:12}, not the pinned ${pinned:0:12}: using it anyway"
    else
        say "$what source: $path (commit ${commit:0:12})"
    fi
}

# The wheel of a distribution in a folder (names may be normalized to lower case), or nothing.
find_wheel() {
    find "$1" -maxdepth 1 -iname "$2-*.whl" 2>/dev/null | head -n1 || true
}

# Builds distribution $1 from the source folder or archive $2 against the installed torch and caches
# the wheel in folder $3. Shows only the compile progress lines; the full log is kept in the cache on failure.
build_wheel() {
    local name="$1" src="$2" dest="$3" log="$WORK/$1-build.log" wheel
    with_ninja_path
    say "compiling $name; progress lines below, full log in $log"
    MAX_JOBS="${MAX_JOBS:-$(nproc)}" "$PY" -m pip wheel --disable-pip-version-check -v --no-build-isolation \
        --no-deps -w "$WORK/dist-$name" "$src" 2>&1 | tee "$log" \
        | grep -E --line-buffered '^ *\[[0-9]+/[0-9]+\]|error:' \
        | sed -u -E 's#^ *(\[[0-9]+/[0-9]+\]).* -c ([^ ]*/)?([^/ ]+\.(cpp|cc|cu)) .*#\1 \3#' || true
    wheel="$(find_wheel "$WORK/dist-$name" "$name")"
    if [ -z "$wheel" ]; then
        mkdir -p "$CACHE/wheels"
        cp "$log" "$CACHE/wheels/$name-build-failed.log"
        tail -n 40 "$log" >&2
        die "the $name build produced no wheel; full log: $CACHE/wheels/$name-build-failed.log"
    fi
    mkdir -p "$dest"
    cp "$wheel" "$dest/"
    rm -f "$CACHE/wheels/$name-build-failed.log"
    say "cached $(basename "$wheel") in $dest"
}

# Prints the cached wheel of distribution $1 in folder $2, building it first with command $3 when missing.
cached_wheel() {
    local name="$1" dest="$2" build="$3" wheel
    wheel="$(find_wheel "$dest" "$name")"
    if [ -z "$wheel" ]; then
        "$build" >&2
        wheel="$(find_wheel "$dest" "$name")"
    else
        say "reusing cached wheel $wheel" >&2
    fi
    echo "$wheel"
}

# ninja makes torch's extension builds parallel; a private copy when the machine has none.
with_ninja_path() {
    if ! command -v ninja >/dev/null 2>&1; then
        "$PY" -m pip install --disable-pip-version-check -q --target "$WORK/ninja" ninja >/dev/null \
            || warn "could not install ninja: the build compiles one file at a time"
        export PATH="$WORK/ninja/bin:$PATH"
    fi
}


# --- Detectron2 ---------------------------------------------------------------------------------------------
D2_PATH="$(fetch_source Detectron2 "${DETECTRON2_SOURCE:-$DETECTRON2_URL}" DETECTRON2_SOURCE)"
read -r D2_KEY D2_COMMIT < <("$PY" "$HERE/source_archive.py" describe "$D2_PATH") \
    || die "cannot read the Detectron2 source $D2_PATH"
report_source Detectron2 "$D2_PATH" "$D2_COMMIT" "$DETECTRON2_COMMIT"
D2_WHEELS="$CACHE/wheels/detectron2-$D2_KEY-$BUILD_TAG"

# Installed from this source's wheel for this torch, and its compiled ops load.
d2_installed() {
    "$PY" -W ignore - "$(basename "$D2_WHEELS")" "$BUILD" <<'EOF' >/dev/null 2>&1
import json, sys
from importlib import metadata
url = json.loads(metadata.distribution("detectron2").read_text("direct_url.json") or "{}").get("url", "")
assert f"/{sys.argv[1]}/" in url, url
import detectron2._C
assert sys.argv[2] == "cpu" or detectron2._C.has_cuda()
EOF
}
check_d2() {
    "$PY" -W ignore - "$BUILD" <<'EOF'
import sys
import torch  # noqa: F401
import detectron2
from detectron2 import _C
if sys.argv[1] != "cpu" and not _C.has_cuda():
    sys.exit(f"detectron2 {detectron2.__version__} was built without CUDA ops")
EOF
}

build_d2_wheel() {
    say "building Detectron2 from $D2_PATH against torch $TORCH_VERSION ($BUILD); about 2 minutes on 2 cores"
    local src="$D2_PATH"
    if [ -d "$src" ]; then
        # Build from a copy: the build writes into its tree (build/, egg-info, model_zoo/configs).
        mkdir -p "$WORK/d2src"
        tar -C "$src" --exclude=.git --exclude=build --exclude='*.egg-info' -cf - . | tar -C "$WORK/d2src" -xf -
        src="$WORK/d2src"
    fi
    build_wheel detectron2 "$src" "$D2_WHEELS"
}

install_d2() {
    local wheel
    wheel="$(cached_wheel detectron2 "$D2_WHEELS" build_d2_wheel)"
    say "installing $(basename "$wheel") and its dependencies"
    pip_install -q --force-reinstall --no-deps "$wheel" || die "pip could not install $wheel"
    pip_install -q "$wheel" || die "pip could not install Detectron2's dependencies (see above)"
}

# detectron2.model_zoo imports pkg_resources, which setuptools >= 82 no longer ships; torch needs
# setuptools >= 77.0.3, so keep one in between (tools/install_mmdet.sh does the same for mmengine).
if ! "$PY" -c "import pkg_resources" >/dev/null 2>&1; then
    say "detectron2.model_zoo needs pkg_resources: installing setuptools>=77.0.3,<82 (torch needs >=77.0.3)"
    pip_install -q "setuptools>=77.0.3,<82" || die "pip could not install setuptools<82 (for pkg_resources)"
fi

if d2_installed; then
    say "Detectron2 from this source is installed and detectron2._C loads: nothing to do"
else
    install_d2
    if ! check_d2 2>"$WORK/d2-import.txt"; then
        # A cached wheel whose ops do not load (e.g. a toolchain change): rebuild once.
        say "the installed Detectron2 does not load its ops ($(tail -n1 "$WORK/d2-import.txt")): rebuilding"
        rm -rf "$D2_WHEELS"
        install_d2
        check_d2 || die "Detectron2 was built and installed but detectron2._C does not load with torch $TORCH_VERSION (see above)"
    fi
fi

# --- Mask2Former --------------------------------------------------------------------------------------------
M2F_PATH="$(fetch_source Mask2Former "${MASK2FORMER_SOURCE:-$MASK2FORMER_URL}" MASK2FORMER_SOURCE)"
read -r M2F_KEY M2F_COMMIT < <("$PY" "$HERE/source_archive.py" describe "$M2F_PATH") \
    || die "cannot read the Mask2Former source $M2F_PATH"
report_source Mask2Former "$M2F_PATH" "$M2F_COMMIT" "$MASK2FORMER_COMMIT"
if [ -d "$M2F_PATH" ]; then
    M2F_TREE="$M2F_PATH"
else
    M2F_TREE="$CACHE/src/Mask2Former-$M2F_KEY"
    "$PY" "$HERE/source_archive.py" unpack "$M2F_PATH" "$M2F_TREE" || die "cannot unpack $M2F_PATH (see above)"
fi
[ -f "$M2F_TREE/mask2former/__init__.py" ] && [ -f "$M2F_TREE/requirements.txt" ] \
    || die "$M2F_TREE is not a Mask2Former tree (no mask2former/__init__.py or requirements.txt)"
M2F_OPS="$M2F_TREE/mask2former/modeling/pixel_decoder/ops"
SITE="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"

# "compiled", "stand-in" (tools/mask2former_cpu_op) or "missing" (not installed, or does not load).
msda_state() {
    "$PY" - <<'EOF' 2>/dev/null || echo missing
import torch  # noqa: F401  (the compiled op links against torch's libraries)
import MultiScaleDeformableAttention as op
print("stand-in" if getattr(op, "REFINE_HOOKS_CPU_STAND_IN", False) else "compiled")
EOF
}

build_msda_wheel() {
    say "building Mask2Former's MultiScaleDeformableAttention CUDA op (its setup.py, as its INSTALL.md says)"
    mkdir -p "$WORK/msda"
    cp -r "$M2F_OPS/." "$WORK/msda/"
    # torch >= 2.6 no longer converts Tensor::type() to the ScalarType that AT_DISPATCH_FLOATING_TYPES
    # takes, so the op's .cu file stops compiling; value.scalar_type() means the same on every torch.
    # Changed in the build copy only.
    local cu="$WORK/msda/src/cuda/ms_deform_attn_cuda.cu"
    if grep -q 'AT_DISPATCH_FLOATING_TYPES(value\.type(),' "$cu" 2>/dev/null; then
        sed -i 's/AT_DISPATCH_FLOATING_TYPES(value\.type(),/AT_DISPATCH_FLOATING_TYPES(value.scalar_type(),/' "$cu"
        say "in the build copy, AT_DISPATCH_FLOATING_TYPES(value.type(), ...) -> value.scalar_type() in" \
            "src/cuda/ms_deform_attn_cuda.cu (Tensor::type() no longer converts to a ScalarType in torch >= 2.6)"
    fi
    build_wheel MultiScaleDeformableAttention "$WORK/msda" "$MSDA_WHEELS"
}

install_msda() {
    local state
    state="$(msda_state)"
    if [ "$BUILD" = "cpu" ]; then
        if [ "$state" = "missing" ]; then
            say "no CUDA build here: installing the CPU stand-in for MultiScaleDeformableAttention" \
                "(Mask2Former computes the attention with its ms_deform_attn_core_pytorch)"
            cp -r "$HERE/mask2former_cpu_op" "$WORK/cpu_op"
            pip_install -q --no-build-isolation --no-deps --force-reinstall "$WORK/cpu_op" \
                || die "pip could not install tools/mask2former_cpu_op"
        else
            say "MultiScaleDeformableAttention is installed ($state)"
        fi
        return
    fi
    if [ "$state" = "compiled" ]; then
        say "MultiScaleDeformableAttention is installed (compiled)"
        return
    fi
    local ops_key wheel
    read -r ops_key _ < <("$PY" "$HERE/source_archive.py" describe "$M2F_OPS")
    MSDA_WHEELS="$CACHE/wheels/msda-$ops_key-$BUILD_TAG"
    wheel="$(cached_wheel MultiScaleDeformableAttention "$MSDA_WHEELS" build_msda_wheel)"
    pip_install -q --force-reinstall --no-deps "$wheel" || die "pip could not install $wheel"
}

# Mask2Former imports from $M2F_TREE and its deformable attention runs: with the compiled op on CUDA
# (checked against Mask2Former's pure-PyTorch version), with the fallback on CPU.
check_m2f() {
    "$PY" -W ignore - "$M2F_TREE" "$BUILD" <<'EOF'
import os, sys
import torch
import mask2former
from mask2former import add_maskformer2_config  # noqa: F401
from mask2former.modeling.pixel_decoder.ops.functions.ms_deform_attn_func import (
    MSDeformAttnFunction, ms_deform_attn_core_pytorch)
from mask2former.modeling.pixel_decoder.ops.modules import MSDeformAttn

tree, build = os.path.realpath(sys.argv[1]), sys.argv[2]
where = os.path.realpath(mask2former.__file__)
if not where.startswith(tree + os.sep):
    sys.exit(f"`import mask2former` loads {where}, not the tree in {tree}: another copy comes first on sys.path")
torch.manual_seed(0)
shapes = torch.tensor([[6, 8], [3, 4]])
starts = torch.tensor([0, 48])
query = torch.rand(2, 60, 32)
attention = MSDeformAttn(d_model=32, n_levels=2, n_heads=4, n_points=2)
out = attention(query, torch.rand(2, 60, 2, 2), query, shapes, starts)
assert out.shape == (2, 60, 32) and torch.isfinite(out).all(), "MSDeformAttn gave no finite output on CPU"
if build != "cpu" and torch.cuda.is_available():
    value = torch.rand(2, 60, 4, 8, dtype=torch.float64, device="cuda")
    locations = torch.rand(2, 10, 4, 2, 2, 2, dtype=torch.float64, device="cuda")
    weights = torch.rand(2, 10, 4, 2, 2, dtype=torch.float64, device="cuda").softmax(-1)
    shapes, starts = shapes.cuda(), starts.cuda()
    compiled = MSDeformAttnFunction.apply(value, shapes, starts, locations, weights, 2)
    reference = ms_deform_attn_core_pytorch(value, shapes, locations, weights)
    if not torch.allclose(compiled, reference, atol=1e-9):
        sys.exit("the compiled MultiScaleDeformableAttention op differs from ms_deform_attn_core_pytorch")
EOF
}

PTH="$SITE/$PTH_NAME"
MSDA_STATE="$(msda_state)"
if [ "$(cat "$PTH" 2>/dev/null || true)" = "$M2F_TREE" ] && [ "$MSDA_STATE" != "missing" ] \
    && { [ "$BUILD" = "cpu" ] || [ "$MSDA_STATE" = "compiled" ]; } && check_m2f >/dev/null 2>&1; then
    say "Mask2Former from $M2F_TREE is installed and runs: nothing to do"
else
    say "installing Mask2Former's requirements.txt"
    pip_install -q -r "$M2F_TREE/requirements.txt" || die "pip could not install $M2F_TREE/requirements.txt (see above)"
    install_msda
    printf '%s\n' "$M2F_TREE" >"$PTH.tmp" && mv "$PTH.tmp" "$PTH"
    say "wrote $PTH: \`import mask2former\` loads $M2F_TREE/mask2former"
    check_m2f || die "Mask2Former from $M2F_TREE does not import or run (see above)"
fi

"$PY" "$HERE/pin_installed.py" | cmp -s - "$CONSTRAINTS" \
    || die "torch, torchvision or numpy changed: was $(tr '\n' ' ' <"$CONSTRAINTS")now $("$PY" "$HERE/pin_installed.py" | tr '\n' ' ')"

case "$(msda_state)" in
    stand-in) ATTENTION="Mask2Former's pure-PyTorch attention (CPU stand-in for its op)" ;;
    *) ATTENTION="Mask2Former's compiled MultiScaleDeformableAttention op" ;;
esac
say "done: detectron2 $("$PY" -c 'from importlib import metadata; print(metadata.version("detectron2"))') (ops load)," \
    "Mask2Former from $M2F_TREE with $ATTENTION, torch $TORCH_VERSION"
say "Mask2Former's configs: $M2F_TREE/configs"

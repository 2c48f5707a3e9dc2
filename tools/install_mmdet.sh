#!/usr/bin/env bash
# Install the `mmdet` extra (mmcv 2.1.0 with its C++ ops, mmengine 0.10.x, mmdet 3.3.0) into a Python
# environment, from nothing but PyPI.
#
#   bash tools/install_mmdet.sh [PYTHON]        # PYTHON defaults to .venv/bin/python
#
# Idempotent: does nothing when `import mmcv.ops, mmdet, mmengine, pkg_resources` already works with
# mmcv 2.1.0.
# mmcv 2.1.0 has no wheels for our torch, so it is built from its PyPI sdist, on CPU, with two changes
# that stay outside the environment:
#   * its setup.py forces -std=c++17; torch 2.14 headers need C++20, so the flag is switched;
#   * its setup.py imports pkg_resources (gone from setuptools >= 70) and its bdist_wheel needs the
#     `wheel` package's command (gone from wheel >= 0.46), so the build runs with setuptools<70,
#     wheel<0.46 and ninja installed into a throw-away directory on PYTHONPATH; the environment's own
#     setuptools (which torch depends on) is left untouched.
# The wheel is cached in ${REFINE_HOOKS_CACHE:-~/.cache/refine_hooks}/wheels and reused next time.
# torch, torchvision and numpy are pinned to their installed versions so pip never replaces them.
set -euo pipefail

PY="${1:-.venv/bin/python}"
MMCV_VERSION="2.1.0"
MMENGINE_VERSION="0.10.7"
MMDET_VERSION="3.3.0"
CACHE_DIR="${REFINE_HOOKS_CACHE:-$HOME/.cache/refine_hooks}/wheels"

say() { echo "[install_mmdet] $*"; }
die() { echo "[install_mmdet] ERROR: $*" >&2; exit 1; }

[ -x "$PY" ] || command -v "$PY" >/dev/null 2>&1 || die "python interpreter '$PY' not found"
# Absolute path (the build runs in another directory); not resolving symlinks keeps a venv's python.
case "$PY" in */*) PY="$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")" ;; esac

# `import mmcv.ops` loads the compiled mmcv._ext, so it fails on an mmcv built without ops.
check_all() {
    "$PY" - "$MMCV_VERSION" <<'EOF' >/dev/null 2>&1
import sys
import mmcv, mmcv.ops, mmdet, mmengine  # noqa: F401
import pkg_resources  # noqa: F401  (mmengine resolves mmdet:: configs with it)
assert mmcv.__version__ == sys.argv[1], mmcv.__version__
EOF
}
check_mmcv() {
    "$PY" - "$MMCV_VERSION" <<'EOF'
import sys
import mmcv, mmcv.ops  # noqa: F401
assert mmcv.__version__ == sys.argv[1], f"mmcv {mmcv.__version__} is installed, {sys.argv[1]} is needed"
EOF
}

if check_all; then
    say "mmcv $MMCV_VERSION (with ops), mmengine, mmdet and pkg_resources already import in $PY: nothing to do"
    exit 0
fi

WORK="$(mktemp -d -t install_mmdet.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT

# Pin what pip must not touch to the versions already installed.
CONSTRAINTS="$WORK/constraints.txt"
"$PY" "$(dirname "$0")/pin_installed.py" >"$CONSTRAINTS"
say "keeping installed versions: $(tr '\n' ' ' <"$CONSTRAINTS")"
grep -q '^torch==' "$CONSTRAINTS" || die "torch is not installed in $PY; install the project first (pip install -e .)"

pip_install() { "$PY" -m pip install --disable-pip-version-check -c "$CONSTRAINTS" "$@"; }

build_mmcv_wheel() {
    say "building mmcv $MMCV_VERSION from its PyPI sdist with C++ ops on CPU"
    say "this takes 15-35 minutes on 2 cores (longer on a busy machine); the wheel is cached afterwards"
    local tools="$WORK/buildtools" src="$WORK/src"
    say "installing build tools (setuptools<70, wheel<0.46, ninja) into $tools (not into the environment)"
    "$PY" -m pip install --disable-pip-version-check -q --no-warn-conflicts --target "$tools" \
        "setuptools<70" "wheel<0.46" ninja

    say "downloading the mmcv $MMCV_VERSION sdist"
    # pip prepares the sdist's metadata by running its setup.py, which needs pkg_resources: same tools.
    PYTHONPATH="$tools${PYTHONPATH:+:$PYTHONPATH}" "$PY" -m pip download --disable-pip-version-check -q \
        --no-deps --no-binary :all: --no-build-isolation "mmcv==$MMCV_VERSION" -d "$WORK/sdist"
    mkdir -p "$src"
    tar -xzf "$WORK"/sdist/mmcv-"$MMCV_VERSION".tar.gz -C "$src"
    local root="$src/mmcv-$MMCV_VERSION"
    [ -f "$root/setup.py" ] || die "unexpected sdist layout: $root/setup.py missing"

    grep -q -- '-std=c++17' "$root/setup.py" || die "mmcv setup.py no longer forces -std=c++17; review this script"
    sed -i 's/-std=c++17/-std=c++20/g' "$root/setup.py"
    say "switched -std=c++17 to -std=c++20 in mmcv's setup.py (the headers of torch 2.14 need C++20)"

    local log="$WORK/build.log"
    say "compiling; progress lines below, full log in $log (kept in $CACHE_DIR on failure)"
    mkdir -p "$WORK/dist"
    (
        cd "$root"
        export PYTHONPATH="$tools${PYTHONPATH:+:$PYTHONPATH}"
        export PATH="$tools/bin:$PATH"
        export MMCV_WITH_OPS=1 FORCE_CUDA=0 MAX_JOBS="${MAX_JOBS:-2}"
        # CPU build even where torch was built with CUDA and a toolkit is around.
        export CUDA_VISIBLE_DEVICES=""
        "$PY" setup.py bdist_wheel -d "$WORK/dist"
    ) 2>&1 | tee "$log" | grep -E --line-buffered '^\[[0-9]+/[0-9]+\]|error:' \
        | sed -u -E 's#^(\[[0-9]+/[0-9]+\]).* -c ([^ ]*/)?([^/ ]+\.(cpp|cc|cu)) .*#\1 \3#' || true
    local wheel
    wheel="$(ls "$WORK"/dist/mmcv-"$MMCV_VERSION"-*.whl 2>/dev/null | head -n1 || true)"
    if [ -z "$wheel" ]; then
        mkdir -p "$CACHE_DIR"
        cp "$log" "$CACHE_DIR/mmcv-build-failed.log"
        tail -n 40 "$log" >&2
        die "the mmcv build produced no wheel; full log: $CACHE_DIR/mmcv-build-failed.log"
    fi
    mkdir -p "$CACHE_DIR"
    cp "$wheel" "$CACHE_DIR/"
    say "cached $(basename "$wheel") in $CACHE_DIR"
}

install_mmcv() {
    local wheel
    wheel="$(ls "$CACHE_DIR"/mmcv-"$MMCV_VERSION"-*.whl 2>/dev/null | head -n1 || true)"
    if [ -z "$wheel" ]; then
        build_mmcv_wheel
        wheel="$(ls "$CACHE_DIR"/mmcv-"$MMCV_VERSION"-*.whl | head -n1)"
    else
        say "reusing cached wheel $wheel"
    fi
    say "installing $(basename "$wheel") and its dependencies"
    pip_install --force-reinstall --no-deps "$wheel"
    pip_install "$wheel"
}

if check_mmcv >/dev/null 2>&1; then
    say "mmcv $MMCV_VERSION with ops is already installed"
else
    install_mmcv
    if ! check_mmcv; then
        # A cached wheel built against another torch fails to load its ops: rebuild once.
        say "the installed mmcv does not import; dropping the cached wheel and rebuilding"
        rm -f "$CACHE_DIR"/mmcv-"$MMCV_VERSION"-*.whl
        install_mmcv
        check_mmcv || die "mmcv $MMCV_VERSION was built but does not import"
    fi
fi

say "installing mmengine==$MMENGINE_VERSION and mmdet==$MMDET_VERSION"
pip_install "mmengine==$MMENGINE_VERSION" "mmdet==$MMDET_VERSION"

# mmengine resolves `_base_ = 'mmdet::...'` with pkg_resources, which setuptools >= 82 no longer ships;
# torch needs setuptools >= 77.0.3, so keep one in between (importing refine_hooks.mmdet also works around
# it, but mmdet's own tools/test.py parses the config before any custom import).
if ! "$PY" -c "import pkg_resources" >/dev/null 2>&1; then
    say "mmengine needs pkg_resources for mmdet:: configs: installing setuptools>=77.0.3,<82 (torch needs >=77.0.3)"
    pip_install "setuptools>=77.0.3,<82"
fi

check_all || { "$PY" -c "import mmcv.ops, mmdet, mmengine"; die "mmdet does not import after installation"; }
"$PY" - <<'EOF'
import mmcv, mmdet, mmengine, torch, numpy
print(f"[install_mmdet] done: mmcv {mmcv.__version__} (ops), mmengine {mmengine.__version__}, "
      f"mmdet {mmdet.__version__}, torch {torch.__version__}, numpy {numpy.__version__}")
EOF

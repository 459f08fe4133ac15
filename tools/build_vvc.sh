#!/usr/bin/env bash
# Build the VVC anchor's encoder and decoder (VVenC 1.14.0, VVdeC 3.2.0) into a
# project-local tools folder; icmlib.evaluation.anchors.VVC finds them there without any variable.
#
#   tools/build_vvc.sh                 download the two release tarballs from GitHub
#   VVC_SRC=DIR tools/build_vvc.sh     build from DIR/vvenc-1.14.0.tar.gz, DIR/vvdec-3.2.0.tar.gz
#
# Variables: VVC_SRC (folder holding the two tarballs; no download), VVC_PREFIX (install
# folder, default <repo>/tools/vvc: binaries in $VVC_PREFIX/bin), VVC_JOBS (default 2),
# VVC_NICE (default 10). Both tarballs are checked against the pinned sha256 before anything
# is unpacked. `make vvc` runs this script. With another VVC_PREFIX, tell the anchor where:
# ICM_VVC_TOOLS=<that prefix>.
set -euo pipefail

VVENC_VERSION=1.14.0
VVDEC_VERSION=3.2.0
VVENC_SHA256=92577cfea21d7ace610a4ef301b736edfdf62666f487e2c398d8b4f997c0af9d
VVDEC_SHA256=a2c477c5954358a6f8b35690b3c1ab182e65883194775749fe953bf4c8f7f2be
VVENC_URL=https://github.com/fraunhoferhhi/vvenc/archive/refs/tags/v${VVENC_VERSION}.tar.gz
VVDEC_URL=https://github.com/fraunhoferhhi/vvdec/archive/refs/tags/v${VVDEC_VERSION}.tar.gz

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PREFIX=${VVC_PREFIX:-$ROOT/tools/vvc}
JOBS=${VVC_JOBS:-2}
NICE=${VVC_NICE:-10}
WORK=$PREFIX/build
STAMP=$PREFIX/.built-vvenc-$VVENC_VERSION-vvdec-$VVDEC_VERSION

die() { echo "build_vvc: error: $*" >&2; exit 1; }
say() { echo "build_vvc: $*"; }

command -v cmake >/dev/null || die "cmake not found (Debian/Ubuntu: apt-get install cmake g++ make)"
command -v c++ >/dev/null || command -v g++ >/dev/null \
    || die "no C++ compiler found (Debian/Ubuntu: apt-get install g++)"

if [[ -f $STAMP && -x $PREFIX/bin/vvencapp && -x $PREFIX/bin/vvdecapp ]]; then
    say "VVenC $VVENC_VERSION and VVdeC $VVDEC_VERSION already in $PREFIX/bin (delete $PREFIX to rebuild)"
    exit 0
fi

sha256_of() {
    if command -v sha256sum >/dev/null; then sha256sum "$1" | cut -d' ' -f1
    else shasum -a 256 "$1" | cut -d' ' -f1; fi
}

verify() {  # file expected-sha256
    [[ -f $1 ]] || die "missing $1"
    local got; got=$(sha256_of "$1")
    [[ $got == "$2" ]] || die "sha256 mismatch for $1: expected $2, got $got"
    say "sha256 ok: $(basename "$1")"
}

mkdir -p "$WORK"
if [[ -n ${VVC_SRC:-} ]]; then
    [[ -d $VVC_SRC ]] || die "VVC_SRC=$VVC_SRC is not a folder"
    SRC=$(cd "$VVC_SRC" && pwd)
    for f in vvenc-$VVENC_VERSION.tar.gz vvdec-$VVDEC_VERSION.tar.gz; do
        [[ -f $SRC/$f ]] || die "VVC_SRC=$VVC_SRC has no $f (it needs vvenc-$VVENC_VERSION.tar.gz and vvdec-$VVDEC_VERSION.tar.gz)"
    done
else
    SRC=$WORK/downloads
    mkdir -p "$SRC"
    fetch() {  # url file
        [[ -f $2 ]] && return 0
        say "downloading $1"
        local ok=1 err
        if command -v curl >/dev/null; then
            err=$(curl -fsSL --retry 1 --connect-timeout 20 -o "$2.part" "$1" 2>&1) && ok=0
        elif command -v wget >/dev/null; then
            err=$(wget -q -T 20 -O "$2.part" "$1" 2>&1) && ok=0
        else
            die "neither curl nor wget found to download $1"
        fi
        if [[ $ok != 0 ]]; then
            rm -f "$2.part"
            err=$(printf '%s\n' "$err" | grep -v '^$' | tail -n 1)
            die "cannot download $1${err:+ ($err)}. Offline? Put vvenc-$VVENC_VERSION.tar.gz and vvdec-$VVDEC_VERSION.tar.gz in a folder and run: make vvc VVC_SRC=<that folder>"
        fi
        mv "$2.part" "$2"
    }
    fetch "$VVENC_URL" "$SRC/vvenc-$VVENC_VERSION.tar.gz"
    fetch "$VVDEC_URL" "$SRC/vvdec-$VVDEC_VERSION.tar.gz"
fi

verify "$SRC/vvenc-$VVENC_VERSION.tar.gz" "$VVENC_SHA256"
verify "$SRC/vvdec-$VVDEC_VERSION.tar.gz" "$VVDEC_SHA256"

build() {  # name version app extra-cmake-args...
    local name=$1 version=$2 app=$3; shift 3
    local src=$WORK/$name-$version
    rm -rf "$src"
    tar -xzf "$SRC/$name-$version.tar.gz" -C "$WORK"
    [[ -f $src/CMakeLists.txt ]] || die "$name-$version.tar.gz did not unpack to $src"
    say "configuring $name $version"
    nice -n "$NICE" cmake -S "$src" -B "$src/build" -DCMAKE_BUILD_TYPE=Release \
        -DCMAKE_INSTALL_PREFIX="$PREFIX" -DBUILD_SHARED_LIBS=OFF "$@" >"$WORK/$name.configure.log" 2>&1 \
        || { tail -n 30 "$WORK/$name.configure.log" >&2; die "cmake configure of $name failed (log: $WORK/$name.configure.log)"; }
    # only the app and its library: the test programs would double the (link-time optimized) links
    say "building $name $version (nice -n $NICE, -j$JOBS; log: $WORK/$name.build.log)"
    nice -n "$NICE" cmake --build "$src/build" --config Release -j "$JOBS" --target "$app" \
        >"$WORK/$name.build.log" 2>&1 \
        || { tail -n 30 "$WORK/$name.build.log" >&2; die "build of $name failed (log: $WORK/$name.build.log)"; }
    cmake --install "$src/build" --config Release >"$WORK/$name.install.log" 2>&1 \
        || { tail -n 30 "$WORK/$name.install.log" >&2; die "install of $name failed"; }
}

start=$(date +%s)
build vvenc "$VVENC_VERSION" vvencapp -DVVENC_ENABLE_WERROR=OFF
# vvdec's install step skips the app unless asked (VVDEC_INSTALL_VVDECAPP); the app is built in
# <src>/bin/release-static either way, so copy it from there if the install did not.
build vvdec "$VVDEC_VERSION" vvdecapp -DVVDEC_ENABLE_WERROR=OFF -DVVDEC_INSTALL_VVDECAPP=ON
mkdir -p "$PREFIX/bin"
if [[ ! -x $PREFIX/bin/vvdecapp ]]; then
    app=$(ls "$WORK/vvdec-$VVDEC_VERSION"/bin/release-*/vvdecapp 2>/dev/null | head -n 1 || true)
    [[ -n $app ]] || die "vvdecapp was not built (looked in $WORK/vvdec-$VVDEC_VERSION/bin/release-*)"
    install -m 755 "$app" "$PREFIX/bin/vvdecapp"
fi
[[ -x $PREFIX/bin/vvencapp ]] || die "vvencapp was not installed into $PREFIX/bin"

"$PREFIX/bin/vvencapp" --version >/dev/null 2>&1 || die "$PREFIX/bin/vvencapp does not run"
"$PREFIX/bin/vvdecapp" --version >/dev/null 2>&1 || die "$PREFIX/bin/vvdecapp does not run"
rm -rf "$WORK/vvenc-$VVENC_VERSION" "$WORK/vvdec-$VVDEC_VERSION"   # sources and objects
touch "$STAMP"
say "done in $(( $(date +%s) - start )) s: $PREFIX/bin/vvencapp, $PREFIX/bin/vvdecapp"

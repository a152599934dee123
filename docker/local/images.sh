#!/usr/bin/env bash
# Builds fairsteer's images with podman on a host that reaches no container registry (the project's CI
# machines): the base images the Dockerfiles name are replaced by local stand-ins, passed as build ARGs.
#
#   docker/local/images.sh cpu       localhost/fairsteer:VERSION-cpu from docker/Dockerfile.cpu
#                                    on a stand-in for python:3.11-slim-bookworm        (make image-cpu)
#   docker/local/images.sh gpu       localhost/fairsteer:VERSION from docker/Dockerfile on a stand-in for
#                                    vllm/vllm-openai:v0.32.0 (Debian + Python + vllm==0.32.0, the CUDA
#                                    build; several GB from PyPI)                          (make image-gpu)
#   docker/local/images.sh router    localhost/fairsteer-router:VERSION from docker/router/Dockerfile
#   docker/local/images.sh podman …  podman with this host's settings (runc, cgroupfs, no ulimits)
#
# The stand-ins: `debootstrap --variant=minbase bookworm` from the Debian mirror apt uses here, cached as
# a tarball in $FAIRSTEER_IMAGE_CACHE (default ~/.cache/fairsteer/images) and imported once, then
# docker/local/python.Containerfile (Debian's Python 3.11 with pip, as python:3.11-slim has it) and
# docker/local/vllm-openai.Containerfile. Builds keep podman's layer cache, so a rerun with unchanged
# sources takes seconds. pip inside a build sees what pip sees here: this host's pip settings (written
# into one pip.conf), its CA bundle and the local wheel folders they name, mounted read-only.
# Installs podman, runc and debootstrap with apt-get when they are missing (needs root).
set -euo pipefail
cd "$(dirname "$0")/../.."
HERE=docker/local
export CONTAINERS_CONF="$PWD/$HERE/containers.conf"
CACHE=${FAIRSTEER_IMAGE_CACHE:-$HOME/.cache/fairsteer/images}
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -1)
VLLM_VERSION=$(sed -n 's/.*"vllm==\([0-9.]*\)".*/\1/p' pyproject.toml | head -1)
DEBIAN_IMAGE=localhost/fairsteer-standin/debian:bookworm-minbase
PYTHON_IMAGE=localhost/fairsteer-standin/python:3.11-slim-bookworm
VLLM_IMAGE=localhost/fairsteer-standin/vllm-openai:v$VLLM_VERSION

log() { printf 'images.sh: %s\n' "$*" >&2; }
pod() { podman --runtime runc --cgroup-manager cgroupfs "$@"; }

ensure_tools() {
    local missing=()
    command -v podman >/dev/null || missing+=(podman)
    command -v runc >/dev/null || missing+=(runc)
    command -v debootstrap >/dev/null || missing+=(debootstrap)
    [ ${#missing[@]} -eq 0 ] && return
    [ "$(id -u)" = 0 ] || { log "missing ${missing[*]}; run: sudo apt-get install -y ${missing[*]}"; exit 1; }
    log "installing ${missing[*]} (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=600 update -qq
    apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# The first Debian mirror apt is configured with (one-line or deb822 sources).
debian_mirror() {
    local uri
    uri=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
          | awk '$1 == "deb" && $3 ~ /^bookworm$/ {print ($2 ~ /^\[/ ? $3 : $2); exit}')
    if [ -z "$uri" ]; then
        uri=$(awk 'BEGIN {RS=""} /Suites:[^\n]*bookworm( |\n|$)/ && !/security/ {
                   for (i = 1; i <= NF; i++) if ($i == "URIs:") {print $(i+1); exit}}' \
              /etc/apt/sources.list.d/*.sources 2>/dev/null)
    fi
    echo "${uri:-http://deb.debian.org/debian}"
}

# Debian 12 minbase as a local image; the debootstrap tarball is cached, the import done once.
ensure_debian() {
    pod image exists "$DEBIAN_IMAGE" && return
    local tarball="$CACHE/debian-bookworm-minbase.tar"
    if [ ! -s "$tarball" ]; then
        local root mirror
        mirror=$(debian_mirror)
        root=$(mktemp -d "${TMPDIR:-/tmp}/fairsteer-rootfs.XXXXXX")
        log "debootstrap --variant=minbase bookworm from $mirror (about 4 minutes, once)"
        debootstrap --variant=minbase bookworm "$root" "$mirror" >"$root.log" 2>&1 \
            || { tail -20 "$root.log" >&2; exit 1; }
        mkdir -p "$CACHE"
        rm -f "$root"/var/cache/apt/archives/*.deb   # debootstrap's downloads: 120 MB the image never needs
        tar -C "$root" --numeric-owner -cf "$tarball.part" . && mv "$tarball.part" "$tarball"
        rm -rf "$root" "$root.log"
    fi
    log "importing $tarball as $DEBIAN_IMAGE"
    pod import -q --change 'CMD ["bash"]' "$tarball" "$DEBIAN_IMAGE" >/dev/null
}

# One pip.conf holding this host's effective pip settings (files and PIP_* variables), and -v options
# for it, the CA bundle (beside, not over, the image's own) and every local folder the settings name.
# `cert-only` keeps just TLS and timeouts: the CUDA build of vLLM must come from PyPI, not from a local
# folder of CPU wheels; `none` mounts nothing.
MOUNTED=/run/fairsteer-build
PIP_BUILD_DIR=$(mktemp -d "${TMPDIR:-/tmp}/fairsteer-pip.XXXXXX")
trap 'rm -rf "$PIP_BUILD_DIR"' EXIT
pip_mounts() {
    local mode=$1 conf="$PIP_BUILD_DIR/pip-$1.conf" key value path
    [ "$mode" = none ] && return
    echo "[global]" >"$conf"
    while IFS= read -r line; do
        key=${line%%=*}; key=${key#*.}; value=${line#*=}; value=${value#\'}; value=${value%\'}
        if [ "$mode" = cert-only ]; then
            case $key in cert|default-timeout|disable-pip-version-check|trusted-host) ;; *) continue ;; esac
        fi
        if [ "$key" = cert ] && [ -f "$value" ]; then
            echo "-v $value:$MOUNTED/ca-certificates.crt:ro"
            value=$MOUNTED/ca-certificates.crt
        else
            for path in $value; do
                path=${path#file://}; path=${path%/}; path=${path%/simple}
                case $path in /*) [ -e "$path" ] && echo "-v $path:$path:ro" ;; esac
            done
        fi
        sed -i "/^$key = /d" "$conf"   # PIP_* variables (listed last) win, as for pip itself
        echo "$key = $value" >>"$conf"
    done < <(python3 -m pip config list 2>/dev/null \
             | awk '{rank = index("global.user.site.:env:.", substr($0, 1, index($0, ".")))} {print rank "\t" $0}' \
             | sort -s -n -k1,1 | cut -f2-)
    echo "-v $conf:/etc/pip.conf:ro"
}

build() {  # build IMAGE DOCKERFILE PIP_MODE [podman build options...]
    local image=$1 file=$2 mode=$3
    shift 3
    local started=$SECONDS
    # shellcheck disable=SC2046  # the mount options are words by design
    pod build --isolation chroot --network host --layers $(pip_mounts "$mode" | sort -u) \
        $([ -f "$file.dockerignore" ] && echo "--ignorefile $file.dockerignore") \
        -f "$file" -t "$image" "$@" . >&2
    log "built $image in $((SECONDS - started)) s, $(pod image inspect --format '{{.Size}}' "$image" \
        | awk '{printf "%.2f GB", $1 / 1e9}')"
}

ensure_python() {
    ensure_debian
    build "$PYTHON_IMAGE" "$HERE/python.Containerfile" none --build-arg "BASE_IMAGE=$DEBIAN_IMAGE"
}

case ${1:-} in
base)
    ensure_tools
    ensure_debian
    ;;
cpu)
    ensure_tools
    ensure_python
    build "localhost/fairsteer:$VERSION-cpu" docker/Dockerfile.cpu full \
        --build-arg "BASE_IMAGE=$PYTHON_IMAGE" --build-arg "TORCH_INDEX_URL=" --build-arg "VERSION=$VERSION"
    ;;
gpu)
    ensure_tools
    ensure_python
    build "$VLLM_IMAGE" "$HERE/vllm-openai.Containerfile" cert-only \
        --build-arg "BASE_IMAGE=$PYTHON_IMAGE" --build-arg "VLLM_VERSION=$VLLM_VERSION"
    build "localhost/fairsteer:$VERSION" docker/Dockerfile cert-only \
        --build-arg "BASE_IMAGE=$VLLM_IMAGE" --build-arg "VERSION=$VERSION"
    ;;
router)
    ensure_tools
    ensure_python
    build "localhost/fairsteer-router:$VERSION" docker/router/Dockerfile full \
        --build-arg "BASE_IMAGE=$PYTHON_IMAGE" --build-arg "VERSION=$VERSION"
    ;;
podman)
    shift
    pod "$@"
    ;;
*)
    sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
    ;;
esac

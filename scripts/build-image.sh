#!/bin/sh
# Builds ctorch's OCI image without pulling any base image (docs/container.md):
#
#   scripts/build-image.sh [BUILD]      (make image runs it after building BUILD, default build)
#
# 1. the runtime packages are derived from the build: `ldd` of ctorch and its plugins,
#    each library's owner from `dpkg -S`; plus what ctorch opens or runs at run time
#    (libcurl4 + ca-certificates for `ctorch download`, openmpi-bin for `ctorch launch`)
# 2. mmdebstrap makes a Debian root filesystem (variant essential: no apt) of only those,
#    without man pages, docs (copyright files kept), locales; ctorch and its plugins are
#    installed in /usr/local by `make install`, less headers/static library/pkg-config;
#    a non-root user ctorch (1000:1000) owns /workspace
# 3. umoci makes the OCI layout: layer 1 is that root filesystem; layer 2 holds only
#    /etc/ctorch/image-digest = layer 1's diff_id (sha256 of its uncompressed tar), which
#    the run manifest records (env.system.container_image); config: user, working
#    directory and volume /workspace, entrypoint ctorch, labels and annotations
# 4. skopeo writes BUILD/ctorch-image.oci.tar (oci-archive: podman load, Docker >= 25)
#    and BUILD/ctorch-image.docker.tar (docker-archive: docker load of any version).
#
# Downloaded .deb files are kept in BUILD/image-cache/debs for the next build. Variables:
# CTORCH_IMAGE_SUITE (bookworm), CTORCH_IMAGE_MIRROR (apt's configured Debian mirror),
# CTORCH_IMAGE_TAG (the version).
set -eu

BUILD=${1:-build}
die() { echo "error: build-image: $*" >&2; exit 1; }
note() { echo "build-image: $*"; }

{ [ -f Makefile ] && [ -f include/ctorch.h ]; } || die "run from the repository root (make image)"

for t in mmdebstrap:mmdebstrap umoci:umoci skopeo:skopeo ldd:libc-bin dpkg-query:dpkg \
         sha256sum:coreutils tar:tar; do
    command -v "${t%%:*}" >/dev/null 2>&1 || die "${t%%:*} not found: install it with" \
        "'scripts/install-deps.sh image' (or: apt-get install -y mmdebstrap umoci skopeo)"
done
if [ "$(id -u)" != 0 ] && ! grep -q "^$(id -un):" /etc/subuid 2>/dev/null; then
    die "not root, and $(id -un) has no range in /etc/subuid: mmdebstrap needs root or" \
        "an unprivileged user namespace. Run 'sudo make image', or add a range" \
        "(sudo usermod --add-subuids 100000-165535 --add-subgids 100000-165535 $(id -un))"
fi

version=$(sed -n 's/^#define CT_VERSION "\([^"]*\)".*/\1/p' include/ctorch.h)
[ -n "$version" ] || die "cannot read CT_VERSION from include/ctorch.h"
tag=${CTORCH_IMAGE_TAG:-$version}
commit=$(git rev-parse HEAD 2>/dev/null || echo unknown)
[ -z "$(git status --porcelain --untracked-files=no 2>/dev/null)" ] || commit="$commit-dirty"
source_url=$(git config --get remote.origin.url 2>/dev/null || true)
case "$source_url" in ''|/*|file:*|.*) source_url="https://github.com/ctorch/ctorch" ;; esac
suite=${CTORCH_IMAGE_SUITE:-bookworm}
mirror=${CTORCH_IMAGE_MIRROR:-}
if [ -z "$mirror" ]; then
    mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.sources \
                 /etc/apt/sources.list.d/*.list 2>/dev/null |
             grep -v '^[[:space:]]*#' | grep -o 'https\?://[^ ]*/debian/\?\( \|$\)' |
             tr -d ' ' | head -n 1 || true)
    mirror=${mirror:-http://deb.debian.org/debian}
fi
created=$(date -u +%Y-%m-%dT%H:%M:%SZ)

for f in "$BUILD/ctorch" "$BUILD/libctorch.so"; do
    [ -f "$f" ] || die "$f is not built: run 'make image' (it builds first) or 'make'"
done

work=$BUILD/image-work
cache=$BUILD/image-cache/debs
rm -rf "$work"
mkdir -p "$work" "$cache"
work=$(cd "$work" && pwd)
cache=$(cd "$cache" && pwd)
trap 'rm -rf "$work"' EXIT INT TERM

# ---- ctorch, staged by make install (the same layout as an installed ctorch)
stage=$work/stage
env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL make --no-print-directory BUILD="$BUILD" install \
    PREFIX=/usr/local DESTDIR="$stage" > "$work/install.log" 2>&1 ||
    { cat "$work/install.log" >&2; die "make install DESTDIR=$stage failed (above)"; }
rm -rf "$stage/usr/local/include" "$stage/usr/local/lib/pkgconfig" \
       "$stage/usr/local/lib/libctorch.a" "$stage/usr/local/lib"/libctorch.so*
mkdir -p "$stage/etc/ctorch" "$stage/workspace"
printf '%s\n' "version=$version" "revision=$commit" "source=$source_url" "created=$created" \
    > "$stage/etc/ctorch/build-info"
bins=$(find "$stage/usr/local" -type f \( -name ctorch -o -name '*.so' \) | sort)

# ---- the Debian packages those files need: ldd, then dpkg -S of each library
owner() { # the package owning library $1, or nothing
    for p in "$(readlink -f "$1")" "$1" "/usr$1" "${1#/usr}"; do
        o=$(dpkg-query -S "$p" 2>/dev/null | grep -v '^diversion' | head -n 1 || true)
        [ -n "$o" ] && { echo "${o%%:*}"; return 0; }
    done
    return 1
}
pkgs=""
for b in $bins; do
    out=$(ldd "$b" 2>&1) || die "ldd $b failed: $out"
    ! echo "$out" | grep -q "not found" ||
        die "$b needs a library this machine lacks: $(echo "$out" | grep 'not found')"
    for lib in $(echo "$out" | awk '$2 == "=>" && $3 ~ /^\// { print $3 }'); do
        p=$(owner "$lib") || die "$lib (needed by ${b#"$stage"}) belongs to no Debian" \
            "package; the image has Debian packages only (rebuild without that dependency)"
        pkgs="$pkgs $p"
    done
done
# Not visible to ldd: libcurl is dlopened by ctorch download / archive --upload (https:
# ca-certificates); ctorch launch runs mpirun (openmpi-bin) when the MPI plugin is built.
pkgs="$pkgs libcurl4 ca-certificates"
[ -f "$stage/usr/local/lib/libctorch_mpi.so" ] && pkgs="$pkgs openmpi-bin"
pkgs=$(echo "$pkgs" | tr ' ' '\n' | grep -v '^$' | sort -u | tr '\n' ',' | sed 's/,$//')
note "Debian $suite from $mirror with: $pkgs"

# ---- the root filesystem, as an uncompressed tar (layer 1)
cat > "$work/users.sh" <<'EOF'
set -eu
echo 'ctorch:x:1000:1000:ctorch:/workspace:/bin/sh' >> "$1/etc/passwd"
echo 'ctorch:x:1000:' >> "$1/etc/group"
echo 'ctorch:*:19000:0:99999:7:::' >> "$1/etc/shadow"
chown 1000:1000 "$1/workspace"
rm -rf "$1/var/lib/apt/lists"/* "$1/var/cache/apt"/*.bin "$1/var/log"/*.log \
       "$1/var/cache/ldconfig/aux-cache" "$1/etc/machine-id"
: > "$1/etc/machine-id"
EOF
note "mmdebstrap (variant essential)..."
# shellcheck disable=SC2016  # "$1" is the root directory, expanded by mmdebstrap's hooks
mmdebstrap --variant=essential --mode=auto --format=tar --quiet \
    --include="$pkgs" \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/lintian/*' \
    --skip=download/empty --skip=essential/unlink \
    --setup-hook='mkdir -p "$1/var/cache/apt/archives"' \
    --setup-hook="sync-in '$cache' /var/cache/apt/archives" \
    --customize-hook="sync-out /var/cache/apt/archives '$cache'" \
    --customize-hook='rm -f "$1"/var/cache/apt/archives/*.deb' \
    --customize-hook="sync-in '$stage' /" \
    --customize-hook="sh '$work/users.sh' \"\$1\"" \
    "$suite" "$work/rootfs.tar" "$mirror" ||
    die "mmdebstrap failed (above): check the network and the mirror $mirror" \
        "(CTORCH_IMAGE_MIRROR=...)"
rootfs_id=sha256:$(sha256sum < "$work/rootfs.tar" | cut -d' ' -f1)

# ---- layer 2: the digest file (an image cannot contain its own manifest digest)
mkdir -p "$work/l2/etc/ctorch"
echo "$rootfs_id" > "$work/l2/etc/ctorch/image-digest"
tar -C "$work/l2" --owner=0 --group=0 --numeric-owner --mtime="$created" \
    -cf "$work/digest.tar" etc

# ---- the OCI layout and its config
oci=$work/oci
umoci init --layout "$oci"
umoci new --image "$oci:$tag"
umoci raw add-layer --image "$oci:$tag" --history.created_by "mmdebstrap $suite + ctorch" \
    "$work/rootfs.tar"
umoci raw add-layer --image "$oci:$tag" --history.created_by "/etc/ctorch/image-digest" \
    "$work/digest.tar"
set -- --config.label "org.opencontainers.image.version=$version" \
       --config.label "org.opencontainers.image.revision=$commit" \
       --config.label "org.opencontainers.image.source=$source_url" \
       --config.label "org.opencontainers.image.created=$created" \
       --config.label "org.opencontainers.image.title=ctorch" \
       --config.label "org.opencontainers.image.base.name=debian:$suite (mmdebstrap)" \
       --config.label "io.ctorch.rootfs.diff_id=$rootfs_id"
umoci config --image "$oci:$tag" "$@" \
    --manifest.annotation "org.opencontainers.image.version=$version" \
    --manifest.annotation "org.opencontainers.image.revision=$commit" \
    --manifest.annotation "org.opencontainers.image.source=$source_url" \
    --manifest.annotation "org.opencontainers.image.created=$created" \
    --config.user 1000:1000 --config.workingdir /workspace --config.volume /workspace \
    --config.entrypoint /usr/local/bin/ctorch --config.cmd=--help \
    --config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --config.env CTORCH_RUNS=/workspace/runs --config.env CTORCH_DATA=/data \
    --config.env HOME=/workspace --config.env NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    --created "$created" --author "ctorch make image" --history.created_by "umoci config"
umoci gc --layout "$oci"

# The layer's diff_id as the config records it must be the digest written in the image.
cfg=$(skopeo inspect --config "oci:$oci:$tag") || die "skopeo cannot read the layout $oci"
echo "$cfg" | tr -d ' \n' | grep -q "\"diff_ids\":\[\"$rootfs_id\"" ||
    die "the config's first diff_id is not $rootfs_id (umoci rewrote the layer?)"

rm -f "$BUILD/ctorch-image.oci.tar" "$BUILD/ctorch-image.docker.tar"
skopeo copy --quiet "oci:$oci:$tag" "oci-archive:$BUILD/ctorch-image.oci.tar:ctorch:$tag"
skopeo copy --quiet "oci:$oci:$tag" "docker-archive:$BUILD/ctorch-image.docker.tar:ctorch:$tag"
echo "$rootfs_id" > "$BUILD/ctorch-image.rootfs-digest"
note "$BUILD/ctorch-image.oci.tar ($(du -m "$BUILD/ctorch-image.oci.tar" | cut -f1) MB," \
     "podman load / docker load on Docker >= 25)"
note "$BUILD/ctorch-image.docker.tar ($(du -m "$BUILD/ctorch-image.docker.tar" | cut -f1) MB," \
     "docker load on any Docker)"
note "ctorch:$tag, root filesystem $rootfs_id (in /etc/ctorch/image-digest and run manifests)"

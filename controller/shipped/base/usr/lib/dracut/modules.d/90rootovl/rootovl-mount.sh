#!/bin/sh
# netroot rootovl, pre-pivot hook (sourced by dracut with NEWROOT set).
#
# With `rootovl` on the kernel command line, the read-only root mounted at
# $NEWROOT is kept at /live/image, a tmpfs is mounted at /live/cow and the
# overlay of both becomes /. Bind and unmount rather than `mount --move`:
# a move is refused under the shared mounts of a systemd initramfs.
#
# `rootovlcfg=a,b` then applies the trees /etc/rootovl/a and /etc/rootovl/b of
# the image in reverse order (so `a` wins): each tree's optional `.rootovldel`
# lists paths (one per line, absolute) to delete before its files are copied.

type getarg >/dev/null 2>&1 || . /lib/dracut-lib.sh

# where the read-only root is kept (a variable so the tests can point it elsewhere)
ROOTOVL_LOWER=${ROOTOVL_LOWER:-/live/image}

rootovl_apply() {
    _name="$1"
    _tree="$ROOTOVL_LOWER/etc/rootovl/$_name"
    case "$_name" in
        ''|*/*|.|..) warn "rootovl: ignoring configuration name '$_name'"; return 0 ;;
    esac
    if [ ! -d "$_tree" ]; then
        warn "rootovl: no configuration tree /etc/rootovl/$_name in the image"
        return 0
    fi
    if [ -f "$_tree/.rootovldel" ]; then
        while IFS= read -r _path || [ -n "$_path" ]; do
            case "$_path" in
                ''|'#'*) continue ;;
                /*) ;;
                *) _path="/$_path" ;;
            esac
            case "$_path" in
                */../*|*/..) warn "rootovl: refusing to delete $_path"; continue ;;
            esac
            rm -rf -- "$NEWROOT$_path"
        done < "$_tree/.rootovldel"
    fi
    cp -a "$_tree/." "$NEWROOT/"
    rm -f -- "$NEWROOT/.rootovldel"
    info "rootovl: applied configuration $_name"
}

# rootovlcfg=a,b: b first, then a, so the first name listed wins
rootovl_apply_all() {
    _reversed=""
    for _name in $(echo "$1" | tr ',' ' '); do
        _reversed="$_name $_reversed"
    done
    for _name in $_reversed; do
        rootovl_apply "$_name"
    done
}

rootovl_mount() {
    modprobe overlay 2>/dev/null
    _size=$(getarg rootovl.size=)
    mkdir -p /live/image /live/cow
    mount --bind "$NEWROOT" /live/image || die "rootovl: cannot keep the root at /live/image"
    umount "$NEWROOT" || umount -l "$NEWROOT"
    mount -t tmpfs -o "mode=0755${_size:+,size=$_size}" tmpfs /live/cow \
        || die "rootovl: cannot mount the tmpfs"
    mkdir -p /live/cow/upper /live/cow/work
    mount -t overlay -o lowerdir=/live/image,upperdir=/live/cow/upper,workdir=/live/cow/work \
        overlay "$NEWROOT" || die "rootovl: cannot mount the overlay"
    mkdir -p "$NEWROOT/live/image" "$NEWROOT/live/cow"
    mount --bind /live/image "$NEWROOT/live/image"
    mount --bind /live/cow "$NEWROOT/live/cow"

    rootovl_apply_all "$(getarg rootovlcfg=)"
    umount /live/image /live/cow 2>/dev/null
    info "rootovl: / is an overlay of /live/image (read-only) and /live/cow (tmpfs)"
}

if getargbool 0 rootovl; then
    rootovl_mount
fi

#!/bin/bash
# netroot rootovl: read-only network root made writable with a tmpfs overlay.
# Kernel command line: rootovl [rootovlcfg=a,b] [rootovl.size=50%]

check() {
    # only when asked for (netroot's dracut.conf.d adds it)
    return 255
}

depends() {
    echo base
    return 0
}

installkernel() {
    hostonly='' instmods overlay
}

install() {
    inst_multiple mount umount mkdir rm cp cat tr sed modprobe
    inst_hook pre-pivot 10 "$moddir/rootovl-mount.sh"
}

#!/bin/sh
# Regenerates the QEMU DTBs in this directory (see README.md). Needs qemu-system-aarch64
# (10.0) and python3. The output differs run to run only in /chosen/rng-seed and
# /chosen/kaslr-seed, which the tests do not look at.
set -eu
cd "$(dirname "$0")"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# guest-loader and -kernel need real files; only their sizes end up in the DTB.
head -c 4096 /dev/zero > "$tmp/kernel.bin"   # module size 0x1000
head -c 8192 /dev/zero > "$tmp/initrd.bin"   # module size 0x2000

q() { qemu-system-aarch64 -nographic "$@"; }

q -machine virt,virtualization=on,iommu=smmuv3,gic-version=3,dumpdtb="$tmp/virt-gicv3.dtb" \
  -cpu max -smp 4 -m 2G -kernel "$tmp/kernel.bin" \
  -device guest-loader,addr=0x50000000,kernel="$tmp/kernel.bin",bootargs="console=ttyAMA0 quiet" \
  -device guest-loader,addr=0x58000000,initrd="$tmp/initrd.bin" \
  -append "warden.log=debug"

q -machine virt,virtualization=on,iommu=smmuv3,gic-version=2,dumpdtb="$tmp/virt-gicv2.dtb" \
  -cpu cortex-a57 -smp 2 -m 1G \
  -device guest-loader,addr=0x48000000,kernel="$tmp/kernel.bin",bootargs="console=ttyAMA0,,115200 earlycon"

q -machine virt,virtualization=on,iommu=smmuv3,gic-version=3,dumpdtb="$tmp/virt-bigram.dtb" \
  -cpu neoverse-n1 -smp 8 -m 5G -kernel "$tmp/kernel.bin" \
  -device guest-loader,addr=0x60000000,kernel="$tmp/kernel.bin",bootargs="console=ttyAMA0 root=/dev/vda rw" \
  -device guest-loader,addr=0x70000000,initrd="$tmp/initrd.bin" \
  -append "warden.log=info warden.pool=64M warden.btm=off"

# QEMU pads its DTB to 1 MiB (totalsize = 0x100000). Pack it like libfdt's fdt_pack():
# QEMU lays the blocks out as header, memory reservations, structure, strings, so the
# packed size is off_dt_strings + size_dt_strings.
for f in virt-gicv3 virt-gicv2 virt-bigram; do
  python3 - "$tmp/$f.dtb" "$f.dtb" <<'PY'
import struct, sys
d = open(sys.argv[1], 'rb').read()
h = list(struct.unpack('>10I', d[:40]))
assert h[0] == 0xd00dfeed and h[4] < h[2] < h[3]
size = h[3] + h[8]
h[1] = size
open(sys.argv[2], 'wb').write(struct.pack('>10I', *h) + d[40:size])
PY
done

dtc -I dts -O dtb -o synthetic.dtb synthetic.dts
ls -l ./*.dtb

#!/bin/busybox sh
# /init of the bench initramfs (`cargo xtask bench` section 3; xtask/src/bench/init.sh).
# Loads the disk's drivers, prints which IOMMU domain the disk is in, runs
#   blkbench /dev/vda <warden_bench.ops> <warden_bench.seed>
# and powers off. Lines for the harness start with WBENCH.
MODULES="@MODULES@"
/bin/busybox mkdir -p /bin /sbin /usr/bin /usr/sbin /proc /sys /dev /tmp
/bin/busybox --install -s
export PATH=/sbin:/usr/sbin:/bin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
dmesg -n 1
for m in $MODULES; do
	insmod "/lib/modules/$m.ko" || echo "WBENCH INFO insmod $m failed"
done
OPS=1000
SEED=1
for w in $(cat /proc/cmdline); do
	case "$w" in
	warden_bench.ops=*) OPS=${w#*=} ;;
	warden_bench.seed=*) SEED=${w#*=} ;;
	esac
done
i=0
while [ ! -b /dev/vda ] && [ $i -lt 15 ]; do
	sleep 1
	i=$((i + 1))
done
dev=$(readlink -f /sys/block/vda/device/.. 2>/dev/null)
dom=$(cat "$dev/iommu_group/type" 2>/dev/null)
echo "WBENCH START $(uname -r) cpus=$(grep -c ^processor /proc/cpuinfo) iommus=$(ls /sys/class/iommu 2>/dev/null | tr '\n' ',') domain=${dom:-none}"
blkbench /dev/vda "$OPS" "$SEED" | sed 's/^/WBENCH /'
echo "WBENCH DONE"
sync
poweroff -f
while :; do sleep 3600; done

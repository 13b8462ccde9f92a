#!/bin/sh
# /init of the kernel correctness VM: attaches every image on the test disk with
# the qcow2 format, prints what it read, then checks the refusals, the raw format,
# LOOP_SET_FD, write attempts and the kernel log. The host compares every line.
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /img /mnt /tmp
mount -t tmpfs tmp /tmp
mount -o ro /dev/vda /img || { echo "MATRIX-FATAL cannot mount the test disk"; poweroff -f; }
echo "MATRIX-START"

for name in $(cat /img/good.list); do
	dev=$(loopfmt attach --format qcow2 --read-only "/img/$name.qcow2")
	rc=$?
	if [ "$rc" != 0 ]; then
		echo "GOOD $name attach-rc=$rc"
		continue
	fi
	n=${dev#/dev/}
	fmt=$(cat "/sys/block/$n/loop/file_fmt")
	size=$(blockdev --getsize64 "$dev")
	sum=$(sha256sum "$dev" | cut -d' ' -f1)
	echo "GOOD $name fmt=$fmt size=$size sha256=$sum"
	loopfmt detach "$dev"
done

for name in $(cat /img/refused.list); do
	dmesg -c > /dev/null
	loopfmt attach --format qcow2 --read-only "/img/$name.qcow2" > /dev/null 2>&1
	rc=$?
	msg=$(dmesg | grep 'loop_qcow2:' | tail -n 1)
	echo "REFUSED $name rc=$rc kmsg=${msg#*loop_qcow2: }"
done

# broken tables behind a valid header: the attach works, the read meets them and must fail
for name in $(cat /img/corrupt.list); do
	dmesg -c > /dev/null
	dev=$(loopfmt attach --format qcow2 --read-only "/img/$name.qcow2")
	rc=$?
	dd if="$dev" of=/dev/null bs=64k 2> /tmp/dd.err
	rrc=$?
	dd if="$dev" of=/dev/null bs=4k count=1 iflag=direct 2> /dev/null
	drc=$?
	loopfmt detach "$dev"
	msg=$(dmesg | grep 'loop_qcow2:' | grep corrupt | tail -n 1)
	echo "CORRUPT $name attach=$rc read=$rrc direct-rc=$drc err=$(grep -o 'Input/output error' /tmp/dd.err | head -n 1 | tr ' ' _) kmsg=${msg#*loop_qcow2: }"
done

# the raw format: LOOP_CONFIGURE through loopfmt, and LOOP_SET_FD through busybox losetup
dev=$(loopfmt attach --format raw --read-only /img/raw.ext4)
echo "RAW-FMT $(cat /sys/block/${dev#/dev/}/loop/file_fmt)"
mount -o ro "$dev" /mnt && echo "RAW-FILE $(sha256sum /mnt/hello.txt | cut -d' ' -f1)"
umount /mnt
loopfmt detach "$dev"
cp /img/raw.ext4 /tmp/raw.ext4
losetup /dev/loop7 /tmp/raw.ext4
mount /dev/loop7 /mnt && echo "SETFD-FILE $(sha256sum /mnt/hello.txt | cut -d' ' -f1) fmt=$(cat /sys/block/loop7/loop/file_fmt)"
echo written > /mnt/new.txt && sync && echo "SETFD-WRITE ok"
umount /mnt
losetup -d /dev/loop7

# writes never reach a qcow2 image
cp "/img/$(head -n 1 /img/good.list).qcow2" /tmp/w.qcow2
before=$(sha256sum /tmp/w.qcow2 | cut -d' ' -f1)
loop-edge /tmp/w.qcow2
dev=$(loopfmt attach --format qcow2 --read-only /tmp/w.qcow2)
echo "RO-FLAG $(cat /sys/block/${dev#/dev/}/ro)"
dd if=/dev/zero of="$dev" bs=4096 count=1 conv=notrunc 2> /tmp/dd.err
echo "WRITE rc=$? $(head -n 1 /tmp/dd.err)"
blkdiscard "$dev" 2> /dev/null
echo "DISCARD rc=$?"
loopfmt detach "$dev"
after=$(sha256sum /tmp/w.qcow2 | cut -d' ' -f1)
[ "$before" = "$after" ] && echo "IMAGE-UNCHANGED yes" || echo "IMAGE-UNCHANGED no"

if dmesg | grep -E 'BUG|Oops|WARNING|KASAN|Call Trace|general protection' > /tmp/bad; then
	echo "DMESG-BAD $(head -n 3 /tmp/bad | tr '\n' '|')"
else
	echo "DMESG-CLEAN"
fi
echo "MATRIX-DONE"
poweroff -f

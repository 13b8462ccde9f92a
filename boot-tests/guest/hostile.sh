#!/bin/sh
# /init of the robustness VM (KASAN + lockdep kernel; KUnit ran before us): attach every
# hostile image with the qcow2 format and read it whole. A refusal or an I/O error is a
# pass; a kernel fault panics the guest (panic_on_warn, kasan.fault=panic, hung task and
# soft lockup panics on the command line), which the host sees.
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -o ro /dev/vda /img || { echo "HOSTILE-FATAL cannot mount the test disk"; poweroff -f; }
# refusals and corruption reports are expected by the thousand: keep them off the console
dmesg -n 1
echo "HOSTILE-START $(wc -l < /img/list)"
for name in $(cat /img/list); do
	dev=$(loopfmt attach --format qcow2 --read-only "/img/$name.qcow2" 2> /dev/null)
	rc=$?
	rrc=-
	if [ "$rc" = 0 ]; then
		timeout 120 dd if="$dev" of=/dev/null bs=1M 2> /dev/null
		rrc=$?
		loopfmt detach "$dev" || echo "HOSTILE-DETACH-FAILED $name"
	fi
	echo "H $name a=$rc r=$rrc"
done
if dmesg | grep -E 'BUG|Oops|WARNING|KASAN|hung task|soft lockup|Call Trace' > /tmp/bad 2>&1; then
	echo "HOSTILE-DMESG-BAD $(head -n 5 /tmp/bad | tr '\n' '|')"
else
	echo "HOSTILE-DMESG-CLEAN"
fi
echo "HOSTILE-DONE"
poweroff -f

#!/bin/sh
# /init of the module VM (config.modular: the qcow2 format is a module, not built in).
# Attaching a qcow2 image must load it (the kernel runs /sbin/modprobe loop-fmt-qcow2), a
# loop device that uses it must pin it, and detaching must let it go. One MOD line per step.
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -o ro /dev/vda /img || { echo "MOD-FATAL cannot mount the test disk"; poweroff -f; }
loaded() { grep -c '^loop_qcow2 ' /proc/modules; }
users() { awk '$1 == "loop_qcow2" { print $3 }' /proc/modules; }
digest() { sha256sum < "$1" | cut -d' ' -f1; }
fmt() { cat "/sys/block/${1#/dev/}/loop/file_fmt"; }

ln -s /bin/busybox /sbin/modprobe
echo "MOD start release=$(uname -r) loaded=$(loaded)"

dev=$(loopfmt attach --format raw --read-only /img/raw.img)
echo "MOD raw rc=$? fmt=$(fmt "$dev") loaded=$(loaded) sha=$(digest "$dev")"
loopfmt detach "$dev"

dev=$(loopfmt attach --format qcow2 --read-only /img/image.qcow2)
echo "MOD qcow2 rc=$? fmt=$(fmt "$dev") loaded=$(loaded) users=$(users) sha=$(digest "$dev")"
rmmod loop_qcow2 2> /dev/null
echo "MOD rmmod-in-use rc=$? loaded=$(loaded)"
loopfmt detach "$dev"
echo "MOD detached users=$(users)"
rmmod loop_qcow2
echo "MOD rmmod rc=$? loaded=$(loaded)"

dev=$(loopfmt attach --format qcow2 --read-only /img/image.qcow2)
echo "MOD reattach rc=$? loaded=$(loaded) sha=$(digest "$dev")"
loopfmt detach "$dev"
rmmod loop_qcow2

# No module loader: the format is unknown, and the attach says so (EPROTONOSUPPORT).
rm /sbin/modprobe
err=$(loopfmt attach --format qcow2 --read-only /img/image.qcow2 2>&1)
echo "MOD no-modprobe rc=$? loaded=$(loaded) err=$err"

if dmesg | grep -E 'BUG|Oops|WARNING|Call Trace' > /tmp/bad; then
	echo "MOD-DMESG-BAD $(head -n 5 /tmp/bad | tr '\n' '|')"
else
	echo "MOD-DMESG-CLEAN"
fi
echo "MOD-DONE"
poweroff -f

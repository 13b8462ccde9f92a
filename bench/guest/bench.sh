#!/bin/sh
# /init of the benchmark VM. The disk (/dev/vda) holds the images and bench.conf; every
# result is one console line the host parses:
#   BENCH rep=R target=T workload=W bytes=N ns=N mibps=X iops=X
#   MEM name=N before=KiB copied=KiB attached=KiB read=KiB dropped=KiB   (MemAvailable)
#   DECOMP target=T algo=A cluster=N device_clusters=N clusters=N in_bytes=N ns=N us_per_cluster=X
# Images are copied into tmpfs first, as a network boot holds its root image in RAM.
export PATH=/bin:/sbin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /disk /img /run /tmp
fatal() { echo "BENCH-FATAL $*"; poweroff -f; }
mount -o ro /dev/vda /disk || fatal "cannot mount the image disk"
. /disk/bench.conf
# room for every image at once; what is not used stays available
mount -t tmpfs -o size=95% img /img || fatal "cannot mount tmpfs"
echo "BENCH-START kernel=$(uname -r) cpus=$(nproc) memtotal_kib=$(awk '/^MemTotal:/{print $2}' /proc/meminfo)"

avail() { awk '/^MemAvailable:/{print $2}' /proc/meminfo; }
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
file_of() { if [ "$1" = raw ]; then echo raw.img; else echo "$1.qcow2"; fi; }
fmt_of() { if [ "$1" = raw ]; then echo raw; else echo qcow2; fi; }

# Memory: one image at a time in an otherwise idle guest.
for name in $MEM_IMAGES; do
	f=$(file_of "$name")
	drop; before=$(avail)
	cp "/disk/$f" /img/ || fatal "cannot copy $f"
	drop; copied=$(avail)
	dev=$(loopfmt attach --format "$(fmt_of "$name")" --read-only "/img/$f") || fatal "attach $f"
	drop; attached=$(avail)
	bench-read buffered "$dev" > /dev/null || fatal "read $dev"
	read=$(avail)
	drop; dropped=$(avail)
	echo "MEM name=$name before=$before copied=$copied attached=$attached read=$read dropped=$dropped"
	loopfmt detach "$dev"
	rm "/img/$f"
done

# Targets: "name device" lines, loop devices first, then NBD.
: > /run/targets
for name in $IMAGES; do
	f=$(file_of "$name")
	cp "/disk/$f" /img/ || fatal "cannot copy $f"
	dev=$(loopfmt attach --format "$(fmt_of "$name")" --read-only "/img/$f") || fatal "attach $f"
	echo "TARGET name=$name dev=$dev fmt=$(cat /sys/block/${dev#/dev/}/loop/file_fmt) bytes=$(stat -c %s "/img/$f")"
	echo "$name $dev" >> /run/targets
done

n=0
if [ ! -e /dev/nbd0 ]; then
	echo "BENCH-NOTE no /dev/nbd0: kernel without CONFIG_BLK_DEV_NBD, qemu-nbd not measured"
	NBD_IMAGES= HOST_NBD=
fi
for name in $NBD_IMAGES; do
	# qemu-nbd as a user-space block server would run: its default writeback cache, thread pool I/O
	LD_LIBRARY_PATH=/lib/x86_64-linux-gnu /usr/bin/qemu-nbd --read-only --format=qcow2 --aio=threads \
		--socket="/run/nbd-$name.sock" --fork "/img/$(file_of "$name")" || fatal "qemu-nbd $name"
	out=$(nbd-attach "/dev/nbd$n" "unix:/run/nbd-$name.sock") || fatal "nbd-attach $name"
	echo "TARGET name=nbd-$name dev=/dev/nbd$n fmt=qemu-nbd $out"
	echo "nbd-$name /dev/nbd$n" >> /run/targets
	n=$((n + 1))
done

if [ -n "$HOST_NBD" ]; then
	# user networking: the host's loopback is 10.0.2.2
	ip link set lo up
	ip link set eth0 up
	ip addr add 10.0.2.15/24 dev eth0
	if out=$(nbd-attach "/dev/nbd$n" "tcp:10.0.2.2:$HOST_NBD_PORT"); then
		echo "TARGET name=host-nbd-$HOST_NBD dev=/dev/nbd$n fmt=host-qemu-nbd $out"
		echo "host-nbd-$HOST_NBD /dev/nbd$n" >> /run/targets
	else
		echo "BENCH-ERROR host nbd: cannot connect to 10.0.2.2:$HOST_NBD_PORT"
	fi
fi

run() { # target device workload
	case "$3" in
	seq1) set -- "$1" "$2" "$3" seq "$2" 1 ;;
	seq4) set -- "$1" "$2" "$3" seq "$2" 4 ;;
	rand1) set -- "$1" "$2" "$3" rand "$2" 1 "$RAND_COUNT" "$SEED" ;;
	rand4) set -- "$1" "$2" "$3" rand "$2" 4 "$RAND_COUNT" "$SEED" ;;
	esac
	t=$1 w=$3
	shift 3
	drop
	if out=$(bench-read "$@" 2>&1); then
		echo "BENCH rep=$rep target=$t workload=$w $out"
	else
		echo "BENCH-ERROR rep=$rep target=$t workload=$w $out"
	fi
}

# Repetitions outermost and targets innermost, so that a slow stretch of the host hits every
# target alike; each repetition starts one target later, so that no target always runs first.
ntargets=$(wc -l < /run/targets)
rep=1
while [ "$rep" -le "$REPEAT" ]; do
	shift_by=$(( (rep - 1) % ntargets ))
	{ tail -n +$((shift_by + 1)) /run/targets; head -n "$shift_by" /run/targets; } > /run/order
	for w in $WORKLOADS; do
		while read -r t dev; do
			run "$t" "$dev" "$w"
		done < /run/order
	done
	rep=$((rep + 1))
done

# The same compressed clusters the loop devices read, decompressed in user space on this CPU:
# what the algorithm costs here, apart from what the driver adds.
command -v bench-qdecomp > /dev/null || { echo "BENCH-NOTE no bench-qdecomp (host without libzstd-dev or zlib1g-dev)"; DECOMP_IMAGES=; }
for name in $DECOMP_IMAGES; do
	if out=$(bench-qdecomp "/img/$(file_of "$name")" 3 2>&1); then
		echo "DECOMP target=$name $out"
	else
		echo "BENCH-ERROR decomp target=$name $out"
	fi
done

while read -r t dev; do
	case "$dev" in
	/dev/nbd*) nbd-attach -d "$dev" ;;
	*) loopfmt detach "$dev" ;;
	esac
done < /run/targets
dmesg | grep -E 'loop_qcow2|nbd|BUG|WARNING|Oops' | sed 's/^/DMESG /'
echo "BENCH-DONE"
poweroff -f

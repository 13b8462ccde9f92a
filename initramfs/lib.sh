# Functions of the netboot initramfs, sourced by /init (installed as /lib/netboot.sh).
#
# Everything here works on arguments and plain files, not on the machine
# (/proc, devices, mounts), so the unit tests in cli/test/initramfs/ run it on
# the host with busybox sh. Conventions: console lines go through say(); a
# function that fails sets REASON to the text that follows "<step> failed: " and
# returns 1; the caller names the step.

# Seconds one HTTP request may take in total, and without receiving a byte.
: "${NETBOOT_HTTP_TIMEOUT:=900}"
: "${NETBOOT_STALL_TIMEOUT:=30}"
# Longest pause between two download attempts.
: "${NETBOOT_MAX_BACKOFF:=30}"
# RAM kept free besides the image: page cache, the overlay's upper layer and the
# new root's first processes all live in memory too.
: "${NETBOOT_MEM_MARGIN_KIB:=32768}"

REASON=

say() {
	echo "netboot: $*"
}

# --- kernel command line -----------------------------------------------------

# cmdline_get NAME [DEFAULT]: value of NAME=value in $CMDLINE (the last one
# wins, as in the kernel); DEFAULT when absent. A bare NAME gives "".
cmdline_get() {
	local name=$1 value=$2 word
	set -f
	for word in $CMDLINE; do
		case $word in
		"$name="*) value=${word#*=} ;;
		"$name") value= ;;
		esac
	done
	set +f
	echo "$value"
}

is_uint() {
	case $1 in
	'' | *[!0-9]*) return 1 ;;
	esac
	return 0
}

is_sha256() {
	[ ${#1} -eq 64 ] || return 1
	case $1 in
	*[!0-9a-f]*) return 1 ;;
	esac
	return 0
}

lower() {
	echo "$1" | tr 'A-F' 'a-f'
}

# mask_to_prefix 255.255.255.0 -> 24; a prefix length passes through. Refuses
# masks whose ones are not contiguous.
mask_to_prefix() {
	local mask=$1 prefix=0 octet bits seen_zero=no
	if is_uint "$mask"; then
		[ "$mask" -le 32 ] && { echo "$mask"; return 0; }
		return 1
	fi
	case $mask in
	*.*.*.*) ;;
	*) return 1 ;;
	esac
	local IFS=.
	set -- $mask
	[ $# -eq 4 ] || return 1
	for octet in "$@"; do
		is_uint "$octet" && [ "$octet" -le 255 ] || return 1
		for bits in 128 64 32 16 8 4 2 1; do
			if [ $((octet & bits)) -ne 0 ]; then
				[ $seen_zero = yes ] && return 1
				prefix=$((prefix + 1))
			else
				seen_zero=yes
			fi
		done
	done
	echo "$prefix"
}

is_ipv4() {
	local IFS=. octet
	case $1 in
	*.*.*.*) ;;
	*) return 1 ;;
	esac
	set -- $1
	[ $# -eq 4 ] || return 1
	for octet in "$@"; do
		is_uint "$octet" && [ "$octet" -le 255 ] || return 1
	done
}

# parse_ip_param VALUE: "dhcp" (or empty) sets IP_MODE=dhcp; the static form
# <ip>::<gw>:<mask>::<iface> (the kernel's ip= field order: client, server,
# gateway, netmask, hostname, device) sets IP_MODE=static, IP_ADDR, IP_GW,
# IP_PREFIX, IP_IFACE (may be empty: first NIC).
parse_ip_param() {
	IP_MODE= IP_ADDR= IP_GW= IP_PREFIX= IP_IFACE=
	case $1 in
	'' | dhcp | on | any)
		IP_MODE=dhcp
		return 0
		;;
	esac
	local param=$1 IFS=:
	set -f
	set -- $1
	set +f
	IP_ADDR=$1 IP_GW=$3 IP_IFACE=$6
	if ! is_ipv4 "$IP_ADDR"; then
		REASON="ip=$param: '$IP_ADDR' is not an IPv4 address (use ip=dhcp or ip=<ip>::<gw>:<mask>::<iface>)"
		return 1
	fi
	if [ -n "$IP_GW" ] && ! is_ipv4 "$IP_GW"; then
		REASON="ip=$param: gateway '$IP_GW' is not an IPv4 address"
		return 1
	fi
	if ! IP_PREFIX=$(mask_to_prefix "${4:-24}"); then
		REASON="ip=$param: netmask '$4' is not a netmask"
		return 1
	fi
	IP_MODE=static
}

# is_mounted DIR [MOUNTS]: whether something is mounted on DIR.
is_mounted() {
	awk -v d="$1" '$2 == d { found = 1 } END { exit !found }' "${2:-/proc/mounts}"
}

# --- JSON ----------------------------------------------------------------------

# json_flatten < FILE: checks that the input is one JSON value and prints one
# line per scalar, "<path>\t<type>\t<value>", the path being the keys/indices
# joined by "/" ("/files/root.qcow2/size"), the type s(tring), n(umber),
# b(oolean) or z (null). Strings keep escapes other than \" \\ \/ as written.
# Prints "invalid JSON at byte N: ..." on stderr and fails on bad input.
json_flatten() {
	awk '
	function fail(msg) {
		printf "invalid JSON at byte %d: %s\n", pos, msg > "/dev/stderr"
		failed = 1
		exit 1
	}
	function ws() {
		while (pos <= n && index(" \t\r\n", substr(s, pos, 1)) > 0)
			pos++
	}
	function emit(path, type, v) {
		printf "%s\t%s\t%s\n", (path == "" ? "/" : path), type, v
	}
	function str(   c, e, out) {
		out = ""
		pos++
		for (;;) {
			c = substr(s, pos, 1)
			if (c == "")
				fail("unterminated string")
			if (c == "\n")
				fail("line break inside a string")
			if (c == "\"") {
				pos++
				return out
			}
			if (c == "\\") {
				e = substr(s, pos + 1, 1)
				if (e == "\"" || e == "\\" || e == "/") {
					out = out e
					pos += 2
					continue
				}
				if (index("bfnrt", e) > 0 && e != "") {
					out = out c e
					pos += 2
					continue
				}
				if (e == "u" && substr(s, pos + 2, 4) ~ /^[0-9a-fA-F][0-9a-fA-F][0-9a-fA-F][0-9a-fA-F]$/) {
					out = out substr(s, pos, 6)
					pos += 6
					continue
				}
				fail("bad escape in string")
			}
			out = out c
			pos++
		}
	}
	function value(path,   c, key, i) {
		ws()
		c = substr(s, pos, 1)
		if (c == "{") {
			pos++
			ws()
			if (substr(s, pos, 1) == "}") {
				pos++
				return
			}
			for (;;) {
				ws()
				if (substr(s, pos, 1) != "\"")
					fail("expected a string key")
				key = str()
				ws()
				if (substr(s, pos, 1) != ":")
					fail("expected : after key \"" key "\"")
				pos++
				value(path "/" key)
				ws()
				c = substr(s, pos, 1)
				pos++
				if (c == "}")
					return
				if (c != ",")
					fail("expected , or } in object")
			}
		}
		if (c == "[") {
			pos++
			ws()
			if (substr(s, pos, 1) == "]") {
				pos++
				return
			}
			for (i = 0; ; i++) {
				value(path "/" i)
				ws()
				c = substr(s, pos, 1)
				pos++
				if (c == "]")
					return
				if (c != ",")
					fail("expected , or ] in array")
			}
		}
		if (c == "\"") {
			emit(path, "s", str())
			return
		}
		if (match(substr(s, pos), /^-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?/)) {
			emit(path, "n", substr(s, pos, RLENGTH))
			pos += RLENGTH
			return
		}
		if (substr(s, pos, 4) == "true" || substr(s, pos, 4) == "null") {
			emit(path, substr(s, pos, 4) == "true" ? "b" : "z", substr(s, pos, 4))
			pos += 4
			return
		}
		if (substr(s, pos, 5) == "false") {
			emit(path, "b", "false")
			pos += 5
			return
		}
		fail(c == "" ? "unexpected end of input" : "unexpected \"" c "\"")
	}
	{ s = s $0 "\n" }
	END {
		if (failed)
			exit 1
		# awk ends every record with a newline, even the last one; the input may not.
		n = length(s)
		if (n > 0)
			s = substr(s, 1, --n)
		pos = 1
		value("")
		ws()
		if (pos <= n)
			fail("trailing data after the value")
	}'
}

# json_get FLAT PATH TYPE: the value at PATH in json_flatten output FLAT (a
# file) if it has TYPE; fails when absent or of another type.
json_get() {
	awk -F '\t' -v p="$2" -v t="$3" '
		$1 == p && $2 == t { v = $3; found = 1 }
		END { if (!found) exit 1; print v }' "$1"
}

# parse_manifest FILE BASE_URL: reads manifest.json
#   {"image": "root.qcow2", "files": {"root.qcow2": {"sha256": "<hex>", "size": N}, ...}}
# and sets MANIFEST_IMAGE, MANIFEST_URL (the image's URL, relative to
# BASE_URL), MANIFEST_SHA256, MANIFEST_SIZE.
parse_manifest() {
	local file=$1 base=$2 flat=$1.flat err
	if ! err=$(json_flatten < "$file" 2>&1 > "$flat"); then
		REASON=$err
		return 1
	fi
	if ! MANIFEST_IMAGE=$(json_get "$flat" /image s); then
		REASON='no "image" string in the manifest'
		return 1
	fi
	case /$MANIFEST_IMAGE/ in
	//* | */../* | *'\'*)
		REASON="\"image\": \"$MANIFEST_IMAGE\" is not a relative file name"
		return 1
		;;
	esac
	MANIFEST_URL=${base%/}/$MANIFEST_IMAGE
	if ! MANIFEST_SHA256=$(json_get "$flat" "/files/$MANIFEST_IMAGE/sha256" s); then
		REASON="no \"files\".\"$MANIFEST_IMAGE\".\"sha256\" string in the manifest"
		return 1
	fi
	MANIFEST_SHA256=$(lower "$MANIFEST_SHA256")
	if ! is_sha256 "$MANIFEST_SHA256"; then
		REASON="sha256 of $MANIFEST_IMAGE is not 64 hex digits: '$MANIFEST_SHA256'"
		return 1
	fi
	if ! MANIFEST_SIZE=$(json_get "$flat" "/files/$MANIFEST_IMAGE/size" n) || ! is_uint "$MANIFEST_SIZE"; then
		REASON="no \"files\".\"$MANIFEST_IMAGE\".\"size\" byte count in the manifest"
		return 1
	fi
}

# url_dir URL: URL without its last path component ("http://h/a/m.json" -> "http://h/a").
url_dir() {
	echo "${1%/*}"
}

# --- memory --------------------------------------------------------------------

# mem_available_kib [MEMINFO]: MemAvailable (MemFree on kernels without it).
mem_available_kib() {
	awk '$1 == "MemAvailable:" { a = $2 } $1 == "MemFree:" { f = $2 }
		END { if (a == "" && f == "") exit 1; print (a != "" ? a : f) }' "${1:-/proc/meminfo}"
}

# mem_check SIZE_BYTES AVAILABLE_KIB: the image lives in RAM (tmpfs), so it
# needs its size plus NETBOOT_MEM_MARGIN_KIB.
mem_check() {
	local need=$((($1 + 1023) / 1024 + NETBOOT_MEM_MARGIN_KIB))
	if [ "$need" -gt "$2" ]; then
		REASON="image needs $need KiB but only $2 KiB free"
		return 1
	fi
}

# --- HTTP ------------------------------------------------------------------------

file_size() {
	if [ -e "$1" ]; then
		stat -c %s "$1"
	else
		echo 0
	fi
}

# Centiseconds since boot (/proc/uptime has two decimals; the "1" prefix keeps a
# fraction like "08" from reading as octal).
uptime_cs() {
	local up rest
	read -r up rest < /proc/uptime
	echo $((${up%.*} * 100 + 1${up#*.} - 100))
}

# mib_per_s BYTES CENTISECONDS -> "12.3"
mib_per_s() {
	local cs=$2 tenths
	[ "$cs" -gt 0 ] || cs=1
	tenths=$(($1 * 1000 / (cs * 1048576)))
	echo "$((tenths / 10)).$((tenths % 10))"
}

# progress_line GOT TOTAL BYTES_IN_INTERVAL INTERVAL_CS
progress_line() {
	local pct=100
	[ "$2" -gt 0 ] && pct=$(($1 * 100 / $2))
	say "download $pct% $(mib_per_s "$3" "$4") MiB/s"
}

# progress_monitor PID FILE TOTAL [START]: runs in the background while wget
# writes FILE (START bytes of it already there): a progress line every second
# while bytes arrive; kills wget (PID) when nothing arrived for
# NETBOOT_STALL_TIMEOUT seconds and leaves FILE.stalled behind.
progress_monitor() {
	local pid=$1 file=$2 total=$3 last=${4:-0} last_cs now now_cs idle=0
	last_cs=$(uptime_cs)
	while kill -0 "$pid" 2>/dev/null; do
		sleep 1
		now=$(file_size "$file")
		now_cs=$(uptime_cs)
		if [ "$now" -gt "$last" ]; then
			idle=0
			[ -n "$total" ] && kill -0 "$pid" 2>/dev/null &&
				progress_line "$now" "$total" $((now - last)) $((now_cs - last_cs))
		else
			idle=$((idle + 1))
			if [ "$idle" -ge "$NETBOOT_STALL_TIMEOUT" ]; then
				: > "$file.stalled"
				kill "$pid" 2>/dev/null
				return
			fi
		fi
		last=$now last_cs=$now_cs
	done
}

# classify_wget_error URL ERRFILE EXIT_STATUS [STALL_MARKER]: sets REASON and
# RETRY (yes/no) from busybox wget's message. Client errors (404...) are final;
# refused connections, timeouts and server errors are worth another attempt.
classify_wget_error() {
	local url=$1 msg code
	# The last message is the fatal one ("restart failed" before it is a warning).
	msg=$(grep '^wget: ' "$2" | tail -n 1 | sed 's/^wget: //')
	RETRY=yes
	if [ -n "$4" ] && [ -e "$4" ]; then
		REASON="no data for ${NETBOOT_STALL_TIMEOUT}s from $url"
	elif [ "$3" = 143 ] || [ "$3" = 124 ]; then
		REASON="timed out after ${NETBOOT_HTTP_TIMEOUT}s fetching $url"
	else
		case $msg in
		*'server returned error: '*)
			code=$(echo "$msg" | sed -n 's/.*server returned error: HTTP\/[0-9.]* \([0-9][0-9][0-9]\).*/\1/p')
			REASON="HTTP ${code:-error} for $url"
			case $code in 4*) RETRY=no ;; esac
			;;
		*'Connection refused'*) REASON="connection refused" ;;
		*'too many redirections'*)
			# A redirect loop stays a loop: asking again only repeats it.
			REASON="too many redirects from $url"
			RETRY=no
			;;
		*'Network is unreachable'* | *'No route to host'*) REASON="no route to the server of $url" ;;
		*'bad address'*) REASON="cannot resolve the host of $url" ;;
		'') REASON="wget exited with status $3 for $url" ;;
		*) REASON=$msg ;;
		esac
	fi
}

# response_framing ERRFILE: from the headers wget -S wrote to ERRFILE, prints
# "<status> <content-length> <range start>" of the last response (the one after
# any redirects); "-" for a header that is absent.
response_framing() {
	awk '
		/^  HTTP\/[0-9.]+ [0-9][0-9][0-9]/ { status = $2; len = "-"; from = "-" }
		tolower($1) == "content-length:" { len = $2 }
		tolower($1) == "content-range:" { split($3, r, "-"); from = r[1] }
		END { if (status == "") exit 1; print status, len, from }' "$1" | tr -d '\r'
}

# fetch_once URL OUT [SIZE] [RESUME]: one wget run. With SIZE, shows progress
# and checks the length; with RESUME=yes, a partial OUT is continued with a
# Range request (wget -c; a server that ignores Range sends the whole file,
# which wget then writes from the start). Sets REASON/RETRY on failure.
fetch_once() {
	local url=$1 out=$2 size=$3 resume=$4 err=$2.err pid monitor rc got have=0 start_cs framing status len from
	rm -f "$err" "$out.stalled"
	[ -n "$size" ] && [ "$resume" = yes ] && have=$(file_size "$out")
	if [ "$have" -gt 0 ] && [ "$have" -lt "$size" ]; then
		say "resuming $url at byte $have"
		set -- -c
	else
		have=0
		rm -f "$out"
		set --
	fi
	start_cs=$(uptime_cs)
	# busybox wget -T crashes in 1.35; timeout(1) bounds the whole request instead.
	# -S puts the response headers into $err, to check the framing afterwards.
	timeout "$NETBOOT_HTTP_TIMEOUT" wget -q -S "$@" -O "$out" "$url" 2> "$err" &
	pid=$!
	progress_monitor "$pid" "$out" "$size" "$have" &
	monitor=$!
	wait "$pid"
	rc=$?
	kill "$monitor" 2>/dev/null
	wait "$monitor" 2>/dev/null
	got=$(file_size "$out")
	if [ "$rc" -eq 0 ] && { [ -z "$size" ] || [ "$got" -eq "$size" ]; }; then
		[ -n "$size" ] && progress_line "$got" "$size" $((got - have)) $(($(uptime_cs) - start_cs))
		return 0
	fi
	if [ -n "$size" ] && framing=$(response_framing "$err"); then
		set -- $framing
		status=$1 len=$2 from=$3
		[ "$status" = 206 ] && is_uint "$from" || from=0
		# The server says the image has another size than the one expected: a
		# stale manifest or a broken server, not something a retry fixes.
		case $status in
		2??)
			if is_uint "$len" && [ $((from + len)) -ne "$size" ]; then
				REASON="server announced $((from + len)) bytes for $url, expected $size"
				RETRY=no
				return 1
			fi
			;;
		esac
	fi
	if [ -n "$size" ] && [ "$got" -ne "$size" ] && { [ "$rc" -eq 0 ] || grep -q 'closed prematurely' "$err"; }; then
		RETRY=yes
		if [ "$got" -lt "$size" ]; then
			REASON="short download: got $got of $size bytes"
		else
			REASON="download longer than announced: got $got of $size bytes"
		fi
		return 1
	fi
	classify_wget_error "$url" "$err" "$rc" "$out.stalled"
	return 1
}

# http_get URL OUT RETRIES [SIZE]: fetch_once with up to RETRIES more attempts
# after retryable failures, waiting 1, 2, 4... (at most NETBOOT_MAX_BACKOFF)
# seconds in between; with SIZE, a retry continues a partial download. Sets
# REASON on failure.
http_get() {
	local url=$1 out=$2 retries=$3 size=$4 attempt=0 delay=1 resume=no
	while ! fetch_once "$url" "$out" "$size" "$resume"; do
		if [ "$RETRY" = no ] || [ "$attempt" -ge "$retries" ]; then
			rm -f "$out"
			return 1
		fi
		attempt=$((attempt + 1))
		say "attempt $attempt of $retries: $REASON; retrying $url in ${delay}s"
		sleep "$delay"
		delay=$((delay * 2))
		[ "$delay" -gt "$NETBOOT_MAX_BACKOFF" ] && delay=$NETBOOT_MAX_BACKOFF
		resume=yes
	done
	rm -f "$out.err" "$out.stalled"
}

# http_size URL RETRIES: Content-Length from a HEAD-like request (wget
# --spider), with the same retries as http_get. Sets HTTP_SIZE.
http_size() {
	local url=$1 retries=$2 attempt=0 delay=1 err=/tmp/netboot-spider.$$ rc
	while :; do
		timeout "$NETBOOT_HTTP_TIMEOUT" wget -S --spider "$url" > /dev/null 2> "$err"
		rc=$?
		if [ "$rc" -eq 0 ]; then
			HTTP_SIZE=$(sed -n 's/^ *[Cc]ontent-[Ll]ength: *\([0-9][0-9]*\).*/\1/p' "$err" | tail -n 1)
			rm -f "$err"
			if [ -z "$HTTP_SIZE" ]; then
				REASON="server sent no Content-Length for $url and there is no manifest to give the size"
				return 1
			fi
			return 0
		fi
		classify_wget_error "$url" "$err" "$rc"
		if [ "$RETRY" = no ] || [ "$attempt" -ge "$retries" ]; then
			rm -f "$err"
			return 1
		fi
		attempt=$((attempt + 1))
		say "attempt $attempt of $retries: $REASON; retrying $url in ${delay}s"
		sleep "$delay"
		delay=$((delay * 2))
		[ "$delay" -gt "$NETBOOT_MAX_BACKOFF" ] && delay=$NETBOOT_MAX_BACKOFF
	done
}

# verify_sha256 FILE EXPECTED: sets REASON on mismatch.
verify_sha256() {
	local got
	got=$(sha256sum "$1" | cut -d ' ' -f 1)
	if [ "$got" != "$2" ]; then
		REASON="sha256 mismatch: expected $2 got $got"
		return 1
	fi
}

// SPDX-License-Identifier: GPL-2.0
/*
 * loopfmt - attach, detach and show loop devices with a file format
 *
 * losetup cannot choose the loop file format added by the netboot kernel
 * series (struct loop_config.file_fmt), so the initramfs carries this
 * small static tool.  It only speaks the loop uAPI: LOOP_CTL_GET_FREE,
 * LOOP_CONFIGURE, LOOP_CLR_FD, LOOP_GET_STATUS64 and sysfs.
 *
 * Every failure prints one line "loopfmt: <what>: <reason>" on stderr and
 * exits with a code that names the class of the failure (see usage()), so
 * a shell script can both show the message and react to the class.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>
#include <linux/fs.h>
#include <linux/loop.h>

/*
 * The series adds an enum of formats and struct loop_config.file_fmt.  Enum
 * constants are invisible to the preprocessor, so the compiler checks them;
 * gcc shows the failing line, hence the message on the same line.
 */
#ifndef LOOP_CONFIGURE
#error "linux/loop.h has no LOOP_CONFIGURE (Linux < 5.8): needs linux/loop.h of the netboot kernel series (-I<kernel cache>/include)"
#endif
_Static_assert(LO_FILE_FMT_QCOW2 == 1, "needs linux/loop.h of the netboot kernel series (-I<kernel cache>/include)");
_Static_assert(sizeof(((struct loop_config *)0)->file_fmt) == 4, "needs linux/loop.h of the netboot kernel series");

/* Exit codes: one per class of failure, documented in usage(). */
enum exit_code {
	EXIT_OK = 0,
	EXIT_FAIL = 1,		/* anything not classified below */
	EXIT_USAGE = 2,
	EXIT_NOFILE = 3,	/* image file missing or unreadable */
	EXIT_NOLOOP = 4,	/* no loop driver, control node or free device */
	EXIT_MALFORMED = 5,	/* EINVAL from the kernel */
	EXIT_UNSUPPORTED = 6,	/* EOPNOTSUPP */
	EXIT_CORRUPT = 7,	/* EUCLEAN */
	EXIT_TOOBIG = 8,	/* EFBIG */
	EXIT_READONLY = 9,	/* EROFS */
	EXIT_NODRIVER = 10,	/* EPROTONOSUPPORT */
	EXIT_BUSY = 11,		/* EBUSY even after retries */
	EXIT_PERM = 12,		/* EPERM/EACCES */
	EXIT_NOTATTACHED = 13,	/* ENXIO on a bound-device operation */
	EXIT_IO = 14,		/* EIO */
};

/* How often attach retries when another attacher takes "our" free device. */
#define ATTACH_ATTEMPTS 16

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

static const char *const fmt_names[] = {
	[LO_FILE_FMT_RAW] = "raw",
	[LO_FILE_FMT_QCOW2] = "qcow2",
};

static void usage(FILE *out)
{
	fprintf(out,
		"Usage: loopfmt attach [--format raw|qcow2] [--read-only] FILE\n"
		"       loopfmt detach /dev/loopN\n"
		"       loopfmt show /dev/loopN\n"
		"       loopfmt --help\n"
		"\n"
		"attach  set up a free loop device for FILE with the given file format\n"
		"        (default raw) and print its name; qcow2 is always read-only.\n"
		"detach  release a loop device.\n"
		"show    print device, file, format, size and read-only state.\n"
		"\n"
		"Exit codes: 0 ok, 1 other failure, 2 usage, 3 image file not usable,\n"
		"4 no loop device, 5 malformed image or unknown format, 6 unsupported\n"
		"image feature, 7 image marked corrupt, 8 image too big, 9 read-only\n"
		"required, 10 no kernel driver for the format, 11 loop device busy,\n"
		"12 permission denied, 13 device not attached, 14 I/O error.\n");
}

static void fail_msg(const char *what, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

static void fail_msg(const char *what, const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "loopfmt: %s: ", what);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

/* Errors any step can hit; returns 0 when @err is not one of them. */
static int common_error(const char *what, int err)
{
	switch (err) {
	case EPERM:
	case EACCES:
		fail_msg(what, "permission denied (loop devices need root)");
		return EXIT_PERM;
	case EIO:
		fail_msg(what, "I/O error (see dmesg)");
		return EXIT_IO;
	case ENOMEM:
		fail_msg(what, "out of memory");
		return EXIT_FAIL;
	}
	return 0;
}

static int fallback_error(const char *what, int err)
{
	int code = common_error(what, err);

	if (code)
		return code;
	fail_msg(what, "%s", strerror(err));
	return EXIT_FAIL;
}

/*
 * The qcow2 driver logs the precise reason for a refused image as
 * "loop_qcow2: <path>: <reason>".  Remember where the kernel log ends before
 * attaching so that, on failure, those lines can be shown next to ours.
 */
static int kmsg_open_at_end(void)
{
	int fd = open("/dev/kmsg", O_RDONLY | O_NONBLOCK | O_CLOEXEC);

	if (fd >= 0 && lseek(fd, 0, SEEK_END) < 0) {
		close(fd);
		return -1;
	}
	return fd;
}

static void kmsg_show_loop_lines(int fd)
{
	char rec[2048];
	ssize_t n;

	if (fd < 0)
		return;
	/* One read returns one record; EPIPE means records were overwritten. */
	while ((n = read(fd, rec, sizeof(rec) - 1)) > 0 || (n < 0 && errno == EPIPE)) {
		char *msg, *nl;

		if (n <= 0)
			continue;
		rec[n] = '\0';
		msg = strchr(rec, ';');
		if (!msg)
			continue;
		msg++;
		nl = strchr(msg, '\n');
		if (nl)
			*nl = '\0';
		if (!strncmp(msg, "loop", 4))
			fprintf(stderr, "loopfmt: kernel: %s\n", msg);
	}
}

static int attach_error(const char *file, const char *fmt_name, int err, int kmsg)
{
	int code;

	switch (err) {
	case EINVAL:
		fail_msg(file, "image is malformed or format unknown");
		code = EXIT_MALFORMED;
		break;
	case EOPNOTSUPP:
		fail_msg(file, "image uses a feature the %s driver does not support (see dmesg)",
			 fmt_name);
		code = EXIT_UNSUPPORTED;
		break;
	case EUCLEAN:
		fail_msg(file, "image is marked corrupt");
		code = EXIT_CORRUPT;
		break;
	case EFBIG:
		fail_msg(file, "image is too big for a loop device");
		code = EXIT_TOOBIG;
		break;
	case EROFS:
		fail_msg(file, "%s images can only be attached read-only", fmt_name);
		code = EXIT_READONLY;
		break;
	case EPROTONOSUPPORT:
		fail_msg(file, "kernel has no driver for format %s", fmt_name);
		code = EXIT_NODRIVER;
		break;
	case EBUSY:
		fail_msg(file, "every free loop device was taken by another attacher (%d attempts)",
			 ATTACH_ATTEMPTS);
		code = EXIT_BUSY;
		break;
	case EBADF:
		fail_msg(file, "not a regular file or block device usable as a loop backing file");
		code = EXIT_NOFILE;
		break;
	default:
		code = fallback_error(file, err);
	}
	kmsg_show_loop_lines(kmsg);
	return code;
}

static int parse_format(const char *name)
{
	int i;

	for (i = 0; i < (int)ARRAY_SIZE(fmt_names); i++)
		if (fmt_names[i] && !strcmp(name, fmt_names[i]))
			return i;
	return -1;
}

/*
 * devtmpfs creates /dev/loopN when the device is added; without devtmpfs
 * (a bare /dev) make the node from the numbers sysfs reports.
 */
static int open_loop_node(int nr, char *path, size_t len, int flags)
{
	char sys[64], buf[32];
	unsigned int maj, min;
	int fd, sfd;
	ssize_t n;

	snprintf(path, len, "/dev/loop%d", nr);
	fd = open(path, flags | O_CLOEXEC);
	if (fd >= 0 || errno != ENOENT)
		return fd;

	snprintf(sys, sizeof(sys), "/sys/devices/virtual/block/loop%d/dev", nr);
	sfd = open(sys, O_RDONLY | O_CLOEXEC);
	if (sfd < 0)
		return -1;
	n = read(sfd, buf, sizeof(buf) - 1);
	close(sfd);
	if (n <= 0)
		return -1;
	buf[n] = '\0';
	if (sscanf(buf, "%u:%u", &maj, &min) != 2) {
		errno = ENOENT;
		return -1;
	}
	if (mknod(path, S_IFBLK | 0660, makedev(maj, min)) && errno != EEXIST)
		return -1;
	return open(path, flags | O_CLOEXEC);
}

/* Reads a one-line sysfs attribute of the block device @rdev, minus "\n". */
static int read_sysfs(dev_t rdev, const char *attr, char *buf, size_t len)
{
	char path[96];
	ssize_t n;
	int fd;

	snprintf(path, sizeof(path), "/sys/dev/block/%u:%u/%s", major(rdev), minor(rdev), attr);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	n = read(fd, buf, len - 1);
	close(fd);
	if (n < 0)
		return -1;
	buf[n] = '\0';
	buf[strcspn(buf, "\n")] = '\0';
	return 0;
}

/*
 * A kernel without the file-format series ignores loop_config.file_fmt (it
 * was reserved space) and attaches a qcow2 image as raw bytes; sysfs tells.
 */
static int check_attached_format(const char *path, const char *want)
{
	char got[32];
	struct stat st;
	int fd;

	if (stat(path, &st))
		return EXIT_OK;	/* the attach itself succeeded; nothing to compare */
	if (read_sysfs(st.st_rdev, "loop/file_fmt", got, sizeof(got)))
		snprintf(got, sizeof(got), "raw");
	if (!strcmp(got, want))
		return EXIT_OK;
	fail_msg(path, "kernel attached the image as %s, not %s (no loop file-format support?); detached it",
		 got, want);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd >= 0) {
		ioctl(fd, LOOP_CLR_FD, 0);
		close(fd);
	}
	return EXIT_NODRIVER;
}

/*
 * Binds cfg->fd to a free loop device.  Returns 0 and the device path, a
 * positive errno from LOOP_CONFIGURE (for attach_error()), or a negative
 * exit code after printing a message for a failure before that.
 *
 * Between LOOP_CTL_GET_FREE and LOOP_CONFIGURE another process may bind the
 * same device; LOOP_CONFIGURE then fails with EBUSY and we ask for another.
 */
static int attach_loop(int ctl, struct loop_config *cfg, char *path, size_t len)
{
	int attempt, nr, loop, err = EBUSY;

	for (attempt = 0; attempt < ATTACH_ATTEMPTS && err == EBUSY; attempt++) {
		nr = ioctl(ctl, LOOP_CTL_GET_FREE);
		if (nr < 0) {
			err = errno;
			if (err == ENODEV || err == ENOSPC || err == ENXIO) {
				fail_msg("/dev/loop-control", "no free loop device (%s)", strerror(err));
				return -EXIT_NOLOOP;
			}
			return -fallback_error("/dev/loop-control", err);
		}
		loop = open_loop_node(nr, path, len, O_RDWR);
		if (loop < 0) {
			err = errno;
			if (err == ENOENT || err == ENXIO || err == ENODEV) {
				fail_msg(path, "no loop device node (%s)", strerror(err));
				return -EXIT_NOLOOP;
			}
			return -fallback_error(path, err);
		}
		err = ioctl(loop, LOOP_CONFIGURE, cfg) ? errno : 0;
		close(loop);
	}
	return err;
}

static int cmd_attach(int argc, char **argv)
{
	const char *fmt_name = "raw", *file = NULL;
	char loop_path[32], abspath[PATH_MAX];
	struct loop_config cfg;
	int read_only = 0, fmt, ctl, img, kmsg, code, err, i;

	for (i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--read-only") || !strcmp(argv[i], "-r")) {
			read_only = 1;
		} else if (!strcmp(argv[i], "--format") || !strcmp(argv[i], "-f")) {
			if (++i == argc) {
				fail_msg("attach", "--format needs a value (raw or qcow2)");
				return EXIT_USAGE;
			}
			fmt_name = argv[i];
		} else if (!strncmp(argv[i], "--format=", 9)) {
			fmt_name = argv[i] + 9;
		} else if (argv[i][0] == '-' && argv[i][1]) {
			fail_msg("attach", "unknown option '%s'", argv[i]);
			return EXIT_USAGE;
		} else if (file) {
			fail_msg("attach", "more than one FILE given ('%s', '%s')", file, argv[i]);
			return EXIT_USAGE;
		} else {
			file = argv[i];
		}
	}
	if (!file) {
		fail_msg("attach", "missing FILE");
		return EXIT_USAGE;
	}
	fmt = parse_format(fmt_name);
	if (fmt < 0) {
		fail_msg("attach", "unknown format '%s' (known: raw, qcow2)", fmt_name);
		return EXIT_USAGE;
	}
	/* The qcow2 driver is read-only; asking for read-write would get EROFS. */
	if (fmt == LO_FILE_FMT_QCOW2)
		read_only = 1;

	img = open(file, (read_only ? O_RDONLY : O_RDWR) | O_CLOEXEC);
	if (img < 0) {
		err = errno;
		if (err == ENOENT) {
			fail_msg(file, "no such file");
			return EXIT_NOFILE;
		}
		if (err == EROFS) {
			fail_msg(file, "file is on a read-only filesystem; use --read-only");
			return EXIT_NOFILE;
		}
		err = fallback_error(file, err);
		return err == EXIT_FAIL ? EXIT_NOFILE : err;
	}

	ctl = open("/dev/loop-control", O_RDWR | O_CLOEXEC);
	if (ctl < 0) {
		err = errno;
		close(img);
		if (err == ENOENT || err == ENXIO || err == ENODEV) {
			fail_msg("/dev/loop-control", "no loop device (loop driver missing or /dev not mounted)");
			return EXIT_NOLOOP;
		}
		return fallback_error("/dev/loop-control", err);
	}

	memset(&cfg, 0, sizeof(cfg));
	cfg.fd = img;
	cfg.file_fmt = fmt;
	if (read_only)
		cfg.info.lo_flags |= LO_FLAGS_READ_ONLY;
	/* Kept for LOOP_GET_STATUS64 users; sysfs reports the full path anyway. */
	if (realpath(file, abspath))
		snprintf((char *)cfg.info.lo_file_name, LO_NAME_SIZE, "%.*s", LO_NAME_SIZE - 1, abspath);

	kmsg = kmsg_open_at_end();
	code = attach_loop(ctl, &cfg, loop_path, sizeof(loop_path));
	close(ctl);
	close(img);	/* a bound loop device holds its own reference */
	if (code < 0) {
		code = -code;		/* already reported */
	} else if (code > 0) {
		code = attach_error(file, fmt_name, code, kmsg);
	} else {
		code = check_attached_format(loop_path, fmt_name);
		if (code == EXIT_OK)
			printf("%s\n", loop_path);
	}
	if (kmsg >= 0)
		close(kmsg);
	return code;
}

static int open_bound_loop(const char *dev, struct loop_info64 *info, dev_t *rdev)
{
	struct stat st;
	int fd = open(dev, O_RDONLY | O_CLOEXEC);

	if (fd < 0) {
		int err = errno;

		if (err == ENOENT || err == ENXIO || err == ENODEV) {
			fail_msg(dev, "no loop device");
			return -EXIT_NOLOOP;
		}
		return -fallback_error(dev, err);
	}
	if (fstat(fd, &st) || !S_ISBLK(st.st_mode) || ioctl(fd, LOOP_GET_STATUS64, info)) {
		int err = S_ISBLK(st.st_mode) ? errno : ENOTTY;

		close(fd);
		if (err == ENXIO) {
			fail_msg(dev, "not attached");
			return -EXIT_NOTATTACHED;
		}
		if (err == ENOTTY || err == EINVAL) {
			fail_msg(dev, "not a loop device");
			return -EXIT_NOLOOP;
		}
		return -fallback_error(dev, err);
	}
	*rdev = st.st_rdev;
	return fd;
}

static int cmd_detach(int argc, char **argv)
{
	struct loop_info64 info;
	dev_t rdev;
	int fd;

	if (argc != 2) {
		fail_msg("detach", "expected exactly one device, e.g. /dev/loop0");
		return EXIT_USAGE;
	}
	fd = open_bound_loop(argv[1], &info, &rdev);
	if (fd < 0)
		return -fd;
	if (ioctl(fd, LOOP_CLR_FD, 0)) {
		int err = errno;

		close(fd);
		if (err == ENXIO) {
			fail_msg(argv[1], "not attached");
			return EXIT_NOTATTACHED;
		}
		if (err == EBUSY) {
			fail_msg(argv[1], "device is busy (mounted or open elsewhere)");
			return EXIT_BUSY;
		}
		return fallback_error(argv[1], err);
	}
	close(fd);
	return EXIT_OK;
}

static int cmd_show(int argc, char **argv)
{
	char file[PATH_MAX + 1], fmt[32], ro[8];
	struct loop_info64 info;
	unsigned long long size;
	dev_t rdev;
	int fd;

	if (argc != 2) {
		fail_msg("show", "expected exactly one device, e.g. /dev/loop0");
		return EXIT_USAGE;
	}
	fd = open_bound_loop(argv[1], &info, &rdev);
	if (fd < 0)
		return -fd;
	if (ioctl(fd, BLKGETSIZE64, &size)) {
		int err = errno;

		close(fd);
		return fallback_error(argv[1], err);
	}
	close(fd);

	if (read_sysfs(rdev, "loop/backing_file", file, sizeof(file)))
		snprintf(file, sizeof(file), "%.*s", LO_NAME_SIZE, (char *)info.lo_file_name);
	/* A kernel without the series has no file_fmt: everything there is raw. */
	if (read_sysfs(rdev, "loop/file_fmt", fmt, sizeof(fmt)))
		snprintf(fmt, sizeof(fmt), "raw");
	if (read_sysfs(rdev, "ro", ro, sizeof(ro)))
		snprintf(ro, sizeof(ro), "%d", !!(info.lo_flags & LO_FLAGS_READ_ONLY));

	printf("device=%s\nfile=%s\nformat=%s\nsize=%llu\nread_only=%s\n",
	       argv[1], file, fmt, size, strcmp(ro, "0") ? "yes" : "no");
	return EXIT_OK;
}

int main(int argc, char **argv)
{
	if (argc < 2) {
		usage(stderr);
		return EXIT_USAGE;
	}
	if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
		usage(stdout);
		return EXIT_OK;
	}
	if (!strcmp(argv[1], "attach"))
		return cmd_attach(argc - 1, argv + 1);
	if (!strcmp(argv[1], "detach"))
		return cmd_detach(argc - 1, argv + 1);
	if (!strcmp(argv[1], "show"))
		return cmd_show(argc - 1, argv + 1);
	fail_msg("usage", "unknown command '%s' (attach, detach, show)", argv[1]);
	usage(stderr);
	return EXIT_USAGE;
}

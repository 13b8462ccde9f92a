// SPDX-License-Identifier: GPL-2.0-only
/*
 * Edge cases of the loop file format uAPI that loopfmt deliberately cannot
 * reach: attach requests it would never make. Prints one line per case,
 * "EDGE <case> errno=<name>", for the boot test to compare.
 *
 * Usage: loop-edge QCOW2_IMAGE
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/loop.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

static const char *errno_name(int err)
{
	switch (err) {
	case 0: return "0";
	case EINVAL: return "EINVAL";
	case EROFS: return "EROFS";
	case EPROTONOSUPPORT: return "EPROTONOSUPPORT";
	case EBUSY: return "EBUSY";
	default: return strerror(err);
	}
}

/* LOOP_CONFIGURE on a free device; returns 0 or the errno. */
static int configure(int file_fd, unsigned int fmt, unsigned int flags)
{
	struct loop_config cfg;
	char dev[32];
	int ctl, nr, loop_fd, err = 0;

	ctl = open("/dev/loop-control", O_RDWR | O_CLOEXEC);
	if (ctl < 0)
		return errno;
	nr = ioctl(ctl, LOOP_CTL_GET_FREE);
	close(ctl);
	if (nr < 0)
		return errno;
	snprintf(dev, sizeof(dev), "/dev/loop%d", nr);
	loop_fd = open(dev, O_RDWR | O_CLOEXEC);
	if (loop_fd < 0)
		return errno;
	memset(&cfg, 0, sizeof(cfg));
	cfg.fd = file_fd;
	cfg.file_fmt = fmt;
	cfg.info.lo_flags = flags;
	if (ioctl(loop_fd, LOOP_CONFIGURE, &cfg) < 0)
		err = errno;
	else
		ioctl(loop_fd, LOOP_CLR_FD, 0);
	close(loop_fd);
	return err;
}

int main(int argc, char **argv)
{
	int rw, ro;

	if (argc != 2) {
		fprintf(stderr, "usage: loop-edge QCOW2_IMAGE\n");
		return 2;
	}
	rw = open(argv[1], O_RDWR | O_CLOEXEC);
	ro = open(argv[1], O_RDONLY | O_CLOEXEC);
	if (rw < 0 || ro < 0) {
		perror(argv[1]);
		return 1;
	}
	printf("EDGE sizeof-loop_config=%zu\n", sizeof(struct loop_config));
	printf("EDGE qcow2-read-write errno=%s\n",
	       errno_name(configure(rw, LO_FILE_FMT_QCOW2, 0)));
	printf("EDGE qcow2-rw-fd-read-only-flag errno=%s\n",
	       errno_name(configure(rw, LO_FILE_FMT_QCOW2, LO_FLAGS_READ_ONLY)));
	printf("EDGE unknown-format errno=%s\n",
	       errno_name(configure(ro, 99, LO_FLAGS_READ_ONLY)));
	printf("EDGE raw-via-configure errno=%s\n",
	       errno_name(configure(ro, LO_FILE_FMT_RAW, 0)));
	return 0;
}

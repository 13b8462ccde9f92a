// SPDX-License-Identifier: GPL-2.0
/*
 * nbd-attach - connect a kernel NBD device to an NBD server, for the benchmark
 *
 *   nbd-attach /dev/nbdN unix:/path/to/socket
 *   nbd-attach /dev/nbdN tcp:IPV4:PORT
 *   nbd-attach -d /dev/nbdN
 *
 * Debian's busybox-static has no nbd-client, so the benchmark carries this:
 * the fixed-newstyle handshake (NBD_OPT_EXPORT_NAME with the default export
 * ""), then the classic ioctl setup (NBD_SET_BLKSIZE, NBD_SET_SIZE,
 * NBD_SET_FLAGS, NBD_SET_SOCK) and NBD_DO_IT, which blocks for as long as
 * the device is connected, in a forked child.  The parent returns once
 * /sys/block/nbdN/pid shows the device is up.  One connection, as
 * nbd-client uses by default.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>
#include <linux/nbd.h>

#define NBD_MAGIC_INIT 0x4e42444d41474943ULL	/* "NBDMAGIC" */
#define NBD_MAGIC_OPT 0x49484156454f5054ULL	/* "IHAVEOPT" */
#define NBD_FLAG_FIXED_NEWSTYLE (1 << 0)
#define NBD_FLAG_NO_ZEROES (1 << 1)
#define NBD_OPT_EXPORT_NAME 1

static void die(const char *what)
{
	fprintf(stderr, "nbd-attach: %s: %s\n", what, strerror(errno));
	exit(1);
}

static void fail(const char *msg)
{
	fprintf(stderr, "nbd-attach: %s\n", msg);
	exit(1);
}

static void recv_all(int fd, void *buf, size_t len)
{
	char *p = buf;

	while (len) {
		ssize_t n = read(fd, p, len);

		if (n == 0)
			fail("server closed the connection during the handshake");
		if (n < 0) {
			if (errno == EINTR)
				continue;
			die("read");
		}
		p += n;
		len -= (size_t)n;
	}
}

static void send_all(int fd, const void *buf, size_t len)
{
	if (write(fd, buf, len) != (ssize_t)len)
		die("write");
}

static int dial(const char *where)
{
	int fd;

	if (!strncmp(where, "unix:", 5)) {
		struct sockaddr_un sa = {.sun_family = AF_UNIX};

		snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", where + 5);
		fd = socket(AF_UNIX, SOCK_STREAM, 0);
		if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)))
			die(where);
		return fd;
	}
	if (!strncmp(where, "tcp:", 4)) {
		/* a numeric IPv4 address: a static binary has no resolver to ask */
		char host[INET_ADDRSTRLEN];
		const char *colon = strrchr(where + 4, ':');
		struct sockaddr_in sa = {.sin_family = AF_INET};
		int one = 1;

		if (!colon || colon - (where + 4) >= (long)sizeof(host))
			fail("tcp address must be tcp:IPV4:PORT");
		snprintf(host, sizeof(host), "%.*s", (int)(colon - (where + 4)), where + 4);
		if (inet_pton(AF_INET, host, &sa.sin_addr) != 1)
			fail("tcp address must be tcp:IPV4:PORT");
		sa.sin_port = htons((uint16_t)atoi(colon + 1));
		fd = socket(AF_INET, SOCK_STREAM, 0);
		if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)))
			die(where);
		/* requests are small: do not let Nagle hold them back */
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		return fd;
	}
	fail("server must be unix:PATH or tcp:HOST:PORT");
	return -1;
}

/* Fixed-newstyle handshake; returns the export size and transmission flags. */
static void handshake(int fd, uint64_t *size, uint16_t *flags)
{
	uint64_t magic;
	uint16_t server_flags;
	uint32_t client_flags;
	struct __attribute__((packed)) {
		uint64_t magic;
		uint32_t option;
		uint32_t length;
	} opt;
	char zeroes[124];

	recv_all(fd, &magic, sizeof(magic));
	if (be64toh(magic) != NBD_MAGIC_INIT)
		fail("not an NBD server (no NBDMAGIC)");
	recv_all(fd, &magic, sizeof(magic));
	if (be64toh(magic) != NBD_MAGIC_OPT)
		fail("server does not speak the newstyle handshake");
	recv_all(fd, &server_flags, sizeof(server_flags));
	server_flags = be16toh(server_flags);
	client_flags = htobe32(server_flags & (NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES));
	send_all(fd, &client_flags, sizeof(client_flags));

	opt.magic = htobe64(NBD_MAGIC_OPT);
	opt.option = htobe32(NBD_OPT_EXPORT_NAME);
	opt.length = 0;	/* the default export, "" */
	send_all(fd, &opt, sizeof(opt));

	recv_all(fd, size, sizeof(*size));
	*size = be64toh(*size);
	recv_all(fd, flags, sizeof(*flags));
	*flags = be16toh(*flags);
	if (!(server_flags & NBD_FLAG_NO_ZEROES))
		recv_all(fd, zeroes, sizeof(zeroes));
}

static const char *sys_attr(const char *dev, const char *attr)
{
	static char path[128];
	const char *base = strrchr(dev, '/');

	snprintf(path, sizeof(path), "/sys/block/%s/%s", base ? base + 1 : dev, attr);
	return path;
}

int main(int argc, char **argv)
{
	uint64_t size;
	uint16_t flags;
	int sock, dev;
	pid_t pid;

	if (argc == 3 && !strcmp(argv[1], "-d")) {
		dev = open(argv[2], O_RDWR);
		if (dev < 0)
			die(argv[2]);
		if (ioctl(dev, NBD_DISCONNECT))
			die("NBD_DISCONNECT");
		ioctl(dev, NBD_CLEAR_SOCK);
		return 0;
	}
	if (argc != 3) {
		fprintf(stderr, "usage: nbd-attach /dev/nbdN unix:PATH|tcp:IPV4:PORT\n"
				"       nbd-attach -d /dev/nbdN\n");
		return 2;
	}

	sock = dial(argv[2]);
	handshake(sock, &size, &flags);
	dev = open(argv[1], O_RDWR);
	if (dev < 0)
		die(argv[1]);
	if (ioctl(dev, NBD_SET_BLKSIZE, 4096UL))
		die("NBD_SET_BLKSIZE");
	if (ioctl(dev, NBD_SET_SIZE, (unsigned long)size))
		die("NBD_SET_SIZE");
	if (ioctl(dev, NBD_SET_FLAGS, (unsigned long)flags))
		die("NBD_SET_FLAGS");
	if (ioctl(dev, NBD_SET_SOCK, (unsigned long)sock))
		die("NBD_SET_SOCK");

	pid = fork();
	if (pid < 0)
		die("fork");
	if (pid == 0) {
		/*
		 * Serves the device until NBD_DISCONNECT or the server goes away.
		 * It must not keep the caller's stdout: a shell's $(nbd-attach ...)
		 * would wait for it forever.
		 */
		int null = open("/dev/null", O_RDWR);

		if (null >= 0) {
			dup2(null, 0);
			dup2(null, 1);
			dup2(null, 2);
			close(null);
		}
		if (ioctl(dev, NBD_DO_IT) && errno != 0)
			_exit(errno == EPIPE || errno == ECONNRESET ? 0 : 1);
		_exit(0);
	}
	for (int i = 0; i < 500; i++) {
		struct stat st;

		if (stat(sys_attr(argv[1], "pid"), &st) == 0) {
			printf("%s size=%llu flags=0x%x\n", argv[1], (unsigned long long)size, flags);
			return 0;
		}
		usleep(10000);
	}
	fail("the device did not come up within 5 s");
	return 1;
}

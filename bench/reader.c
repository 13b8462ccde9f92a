// SPDX-License-Identifier: GPL-2.0
/*
 * bench-read - read a block device the way the benchmark needs, and time it
 *
 *   bench-read seq  DEV READERS          1 MiB O_DIRECT reads; reader i reads the
 *                                        i-th of READERS equal slices of DEV
 *   bench-read rand DEV READERS COUNT SEED
 *                                        COUNT 4 KiB O_DIRECT reads per reader at
 *                                        offsets from xorshift64*(SEED + i)
 *   bench-read buffered DEV              the whole device through the page cache
 *
 * Readers are forked processes that open the device, then wait on a pipe so
 * that they all start together; the clock (CLOCK_MONOTONIC) runs from
 * releasing them to the last one's exit.  One line on stdout:
 *   bytes=N ns=N mibps=X iops=X
 * A short read or an error fails the run (exit 1): a benchmark that silently
 * reads less would report a speed that was never reached.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <linux/fs.h>

#define SEQ_BLOCK (1u << 20)
#define RAND_BLOCK 4096u
#define MAX_READERS 64

enum mode { SEQ, RAND, BUFFERED };

static void die(const char *what)
{
	fprintf(stderr, "bench-read: %s: %s\n", what, strerror(errno));
	exit(1);
}

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* xorshift64*: cheap next to a 4 KiB read, and the same offsets on every run. */
static uint64_t next_rand(uint64_t *s)
{
	*s ^= *s >> 12;
	*s ^= *s << 25;
	*s ^= *s >> 27;
	return *s * 0x2545F4914F6CDD1DULL;
}

static void read_exact(int fd, void *buf, size_t len, off_t off)
{
	ssize_t n = pread(fd, buf, len, off);

	if (n < 0)
		die("pread");
	if ((size_t)n != len) {
		fprintf(stderr, "bench-read: short read at %lld: %zd of %zu bytes\n", (long long)off, n, len);
		exit(1);
	}
}

/* One reader's share of the work; returns the bytes it read. */
static uint64_t run_reader(enum mode mode, int fd, uint64_t size, int idx, int readers,
			   long count, uint64_t seed)
{
	size_t block = mode == RAND ? RAND_BLOCK : SEQ_BLOCK;
	uint64_t done = 0;
	void *buf;

	if (posix_memalign(&buf, 4096, block))
		die("posix_memalign");
	if (mode == RAND) {
		uint64_t blocks = size / RAND_BLOCK;
		/* xorshift must not start at 0; the seed mix keeps readers apart */
		uint64_t s = (seed + (uint64_t)idx) * 0x9E3779B97F4A7C15ULL | 1;

		for (long i = 0; i < count; i++) {
			read_exact(fd, buf, RAND_BLOCK, (off_t)(next_rand(&s) % blocks * RAND_BLOCK));
			done += RAND_BLOCK;
		}
	} else {
		/* slices in whole blocks, the last reader takes the remainder */
		uint64_t per = size / SEQ_BLOCK / (uint64_t)readers * SEQ_BLOCK;
		uint64_t off = per * (uint64_t)idx;
		uint64_t end = idx == readers - 1 ? size : off + per;

		while (off < end) {
			size_t len = end - off < block ? (size_t)(end - off) : block;

			read_exact(fd, buf, len, (off_t)off);
			off += len;
			done += len;
		}
	}
	free(buf);
	return done;
}

static void usage(void)
{
	fprintf(stderr, "usage: bench-read seq DEV READERS\n"
			"       bench-read rand DEV READERS COUNT SEED\n"
			"       bench-read buffered DEV\n");
	exit(2);
}

int main(int argc, char **argv)
{
	enum mode mode;
	int readers = 1, go[2];
	long count = 0;
	uint64_t seed = 0, size, t0, t1, total = 0;
	pid_t pids[MAX_READERS];
	int fd;

	if (argc < 3)
		usage();
	if (!strcmp(argv[1], "seq") && argc == 4)
		mode = SEQ;
	else if (!strcmp(argv[1], "rand") && argc == 6)
		mode = RAND;
	else if (!strcmp(argv[1], "buffered") && argc == 3)
		mode = BUFFERED;
	else
		usage();
	if (mode != BUFFERED)
		readers = atoi(argv[3]);
	if (mode == RAND) {
		count = atol(argv[4]);
		seed = strtoull(argv[5], NULL, 0);
	}
	if (readers < 1 || readers > MAX_READERS || (mode == RAND && count < 1))
		usage();

	fd = open(argv[2], O_RDONLY);
	if (fd < 0)
		die(argv[2]);
	{
		struct stat st;

		if (fstat(fd, &st))
			die("fstat");
		/* a regular file too, to try the tool on a host without a device */
		if (S_ISREG(st.st_mode))
			size = (uint64_t)st.st_size;
		else if (ioctl(fd, BLKGETSIZE64, &size))
			die("BLKGETSIZE64");
	}
	close(fd);
	if (size < SEQ_BLOCK * (uint64_t)readers) {
		fprintf(stderr, "bench-read: %s is too small (%" PRIu64 " bytes)\n", argv[2], size);
		return 1;
	}

	if (pipe(go))
		die("pipe");
	for (int i = 0; i < readers; i++) {
		pids[i] = fork();
		if (pids[i] < 0)
			die("fork");
		if (pids[i] == 0) {
			char c;
			int rfd = open(argv[2], O_RDONLY | (mode == BUFFERED ? 0 : O_DIRECT));

			if (rfd < 0)
				die(argv[2]);
			close(go[1]);
			/* EOF when the parent closes its end: the start signal for all */
			if (read(go[0], &c, 1) < 0)
				die("start pipe");
			run_reader(mode, rfd, size, i, readers, count, seed);
			_exit(0);
		}
	}
	close(go[0]);
	/* let the children open the device before the clock starts */
	usleep(100000);
	t0 = now_ns();
	close(go[1]);
	for (int i = 0; i < readers; i++) {
		int status;

		if (waitpid(pids[i], &status, 0) < 0)
			die("waitpid");
		if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
			fprintf(stderr, "bench-read: reader %d failed\n", i);
			return 1;
		}
	}
	t1 = now_ns();

	if (mode == RAND)
		total = (uint64_t)count * RAND_BLOCK * (uint64_t)readers;
	else
		total = size;
	{
		double secs = (double)(t1 - t0) / 1e9;
		double ios = mode == RAND ? (double)total / RAND_BLOCK : (double)total / SEQ_BLOCK;

		printf("bytes=%" PRIu64 " ns=%" PRIu64 " mibps=%.2f iops=%.1f\n", total, t1 - t0,
		       (double)total / 1048576.0 / secs, ios / secs);
	}
	return 0;
}

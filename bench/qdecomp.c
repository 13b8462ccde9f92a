// SPDX-License-Identifier: GPL-2.0
/*
 * bench-qdecomp - user-space cost of decompressing one qcow2 image's clusters
 *
 *   bench-qdecomp IMAGE.qcow2 [ROUNDS]
 *
 * Walks the image's L1 and L2 tables, reads every compressed cluster into
 * memory, then times decompressing all of them (ROUNDS times, default 3; the
 * fastest round counts), with the library the image's header names.  Run in
 * the bench guest next to the loop device that reads the same file, it splits
 * the device's read time into "what the algorithm costs on this CPU" and
 * "what the driver adds".  One output line:
 *   algo=zstd cluster=N device_clusters=N clusters=N in_bytes=N ns=N us_per_cluster=X
 */
#include <endian.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <fcntl.h>
#include <zlib.h>
#include <zstd.h>

#define COMPRESSED_FLAG (1ULL << 62)
#define L1_OFFSET_MASK 0x00fffffffffffe00ULL
#define INCOMPAT_EXTL2 (1ULL << 4)

struct blob {
	unsigned char *data;
	size_t len;
};

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void die(const char *what)
{
	fprintf(stderr, "bench-qdecomp: %s\n", what);
	exit(1);
}

static uint32_t be32_at(const unsigned char *p)
{
	uint32_t v;

	memcpy(&v, p, 4);
	return be32toh(v);
}

static uint64_t be64_at(const unsigned char *p)
{
	uint64_t v;

	memcpy(&v, p, 8);
	return be64toh(v);
}

static void read_at(int fd, void *buf, size_t len, uint64_t off)
{
	if (pread(fd, buf, len, (off_t)off) != (ssize_t)len)
		die("short read");
}

static int inflate_one(z_stream *s, const struct blob *b, unsigned char *out, size_t cluster)
{
	int ret;

	inflateReset(s);
	s->next_in = b->data;
	s->avail_in = (uInt)b->len;
	s->next_out = out;
	s->avail_out = (uInt)cluster;
	ret = inflate(s, Z_FINISH);
	/* the compressed bytes are padded to a sector: the stream may end early */
	return s->avail_out == 0 && (ret == Z_STREAM_END || ret == Z_OK || ret == Z_BUF_ERROR) ? 0 : -1;
}

static int unzstd_one(ZSTD_DCtx *dctx, const struct blob *b, unsigned char *out, size_t cluster)
{
	size_t frame = ZSTD_findFrameCompressedSize(b->data, b->len);

	if (ZSTD_isError(frame))
		return -1;
	return ZSTD_decompressDCtx(dctx, out, cluster, b->data, frame) == cluster ? 0 : -1;
}

int main(int argc, char **argv)
{
	unsigned char hdr[112] = {0};
	uint64_t *l1, *l2, size, in_bytes = 0, best = UINT64_MAX;
	uint32_t cluster_bits, l1_size, entry_words = 1;
	size_t cluster, n = 0, cap = 0, device_clusters;
	struct blob *blobs = NULL;
	unsigned char *out;
	int fd, zstd = 0, rounds = argc > 2 ? atoi(argv[2]) : 3;
	z_stream inf = {0};
	ZSTD_DCtx *dctx = ZSTD_createDCtx();

	if (argc < 2 || (fd = open(argv[1], O_RDONLY)) < 0) {
		fprintf(stderr, "usage: bench-qdecomp IMAGE.qcow2 [ROUNDS]\n");
		return 2;
	}
	read_at(fd, hdr, 104, 0);
	if (be32_at(hdr) != 0x514649fb)
		die("not a qcow2 image");
	cluster_bits = be32_at(hdr + 20);
	if (cluster_bits < 9 || cluster_bits > 21)
		die("cluster_bits out of range");
	cluster = (size_t)1 << cluster_bits;
	size = be64_at(hdr + 24);
	l1_size = be32_at(hdr + 36);
	if (be32_at(hdr + 4) >= 3) {
		if (be64_at(hdr + 72) & INCOMPAT_EXTL2)
			entry_words = 2;
		if (be32_at(hdr + 100) > 104) {
			read_at(fd, hdr + 104, 1, 104);
			zstd = hdr[104] == 1;
		}
	}
	device_clusters = (size + cluster - 1) >> cluster_bits;

	l1 = calloc(l1_size ? l1_size : 1, 8);
	l2 = malloc(cluster);
	out = malloc(cluster);
	if (!l1 || !l2 || !out)
		die("out of memory");
	read_at(fd, l1, (size_t)l1_size * 8, be64_at(hdr + 40));
	for (uint32_t i = 0; i < l1_size; i++) {
		uint64_t l2_off = be64toh(l1[i]) & L1_OFFSET_MASK;

		if (!l2_off)
			continue;
		read_at(fd, l2, cluster, l2_off);
		for (size_t j = 0; j < cluster / 8; j += entry_words) {
			uint64_t e = be64toh(l2[j]), off, len;
			unsigned int x = 62 - (cluster_bits - 8);

			if (!(e & COMPRESSED_FLAG))
				continue;
			off = e & ((1ULL << x) - 1);
			len = (((e >> x) & ((1ULL << (cluster_bits - 8)) - 1)) + 1) * 512 - (off & 511);
			if (n == cap) {
				cap = cap ? 2 * cap : 1024;
				blobs = realloc(blobs, cap * sizeof(*blobs));
				if (!blobs)
					die("out of memory");
			}
			blobs[n].data = malloc(len);
			if (!blobs[n].data)
				die("out of memory");
			/* the last cluster of the file may end inside its last sector */
			blobs[n].len = pread(fd, blobs[n].data, len, (off_t)off);
			if ((ssize_t)blobs[n].len <= 0)
				die("compressed cluster past the end of the file");
			in_bytes += blobs[n++].len;
		}
	}
	close(fd);
	if (!n)
		die("no compressed clusters");

	if (!zstd && inflateInit2(&inf, -12) != Z_OK)
		die("inflateInit2");
	for (int r = 0; r < rounds; r++) {
		uint64_t t0 = now_ns(), t;

		for (size_t i = 0; i < n; i++)
			if (zstd ? unzstd_one(dctx, &blobs[i], out, cluster) : inflate_one(&inf, &blobs[i], out, cluster))
				die("a cluster does not decompress to one cluster");
		t = now_ns() - t0;
		if (t < best)
			best = t;
	}
	printf("algo=%s cluster=%zu device_clusters=%zu clusters=%zu in_bytes=%llu ns=%llu us_per_cluster=%.1f\n",
	       zstd ? "zstd" : "deflate", cluster, device_clusters, n, (unsigned long long)in_bytes,
	       (unsigned long long)best, best / 1e3 / (double)n);
	return 0;
}

// SPDX-License-Identifier: GPL-2.0
/*
 * bench-decomp - decompression cost of 64 KiB clusters, zstd against deflate
 *
 *   bench-decomp IMAGE [CLUSTER_BYTES]
 *
 * Cuts IMAGE (the raw benchmark image) into clusters, compresses each one on
 * its own as qemu-img does for qcow2 (deflate: raw stream, 4 KiB window,
 * default level; zstd: level 3 frame), keeps the clusters that got smaller
 * (qemu-img stores the others uncompressed), then times decompressing all of
 * them with each algorithm.  Run natively and under qemu-x86_64 (TCG), it
 * tells whether a zstd-slower-than-deflate result in the TCG guest comes from
 * the emulator or from the kernel driver.  Output, one line per algorithm:
 *   algo=zstd clusters=N in_bytes=N ns=N mibps=X us_per_cluster=X
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zlib.h>
#include <zstd.h>

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

struct blob {
	unsigned char *data;
	size_t len;
};

static size_t deflate_cluster(const unsigned char *src, size_t n, unsigned char *dst, size_t cap)
{
	z_stream s = {0};
	size_t out;

	if (deflateInit2(&s, Z_DEFAULT_COMPRESSION, Z_DEFLATED, -12, 9, Z_DEFAULT_STRATEGY) != Z_OK)
		exit(1);
	s.next_in = (unsigned char *)src;
	s.avail_in = (uInt)n;
	s.next_out = dst;
	s.avail_out = (uInt)cap;
	if (deflate(&s, Z_FINISH) != Z_STREAM_END)
		out = cap;	/* did not fit: stored uncompressed */
	else
		out = cap - s.avail_out;
	deflateEnd(&s);
	return out;
}

int main(int argc, char **argv)
{
	size_t cluster = argc > 2 ? strtoul(argv[2], NULL, 0) : 65536, nz = 0, nd = 0, inz = 0, ind = 0;
	unsigned char *buf = malloc(cluster), *tmp = malloc(2 * cluster), *out = malloc(cluster);
	struct blob *zs = NULL, *ds = NULL;
	size_t cap = 0;
	FILE *f;
	z_stream inf = {0};
	ZSTD_DCtx *dctx = ZSTD_createDCtx();
	uint64_t t0, t1;

	if (argc < 2 || !(f = fopen(argv[1], "rb"))) {
		fprintf(stderr, "usage: bench-decomp IMAGE [CLUSTER_BYTES]\n");
		return 2;
	}
	while (fread(buf, 1, cluster, f) == cluster) {
		size_t z, d;

		if (nz == cap || nd == cap) {
			cap = cap ? 2 * cap : 1024;
			zs = realloc(zs, cap * sizeof(*zs));
			ds = realloc(ds, cap * sizeof(*ds));
		}
		z = ZSTD_compress(tmp, 2 * cluster, buf, cluster, 3);
		if (!ZSTD_isError(z) && z < cluster) {
			zs[nz].data = malloc(z);
			memcpy(zs[nz].data, tmp, z);
			zs[nz++].len = z;
			inz += z;
		}
		d = deflate_cluster(buf, cluster, tmp, cluster - 1);
		if (d < cluster - 1) {
			ds[nd].data = malloc(d);
			memcpy(ds[nd].data, tmp, d);
			ds[nd++].len = d;
			ind += d;
		}
	}
	fclose(f);

	t0 = now_ns();
	for (size_t i = 0; i < nz; i++)
		if (ZSTD_decompressDCtx(dctx, out, cluster, zs[i].data, zs[i].len) != cluster)
			return 1;
	t1 = now_ns();
	printf("algo=zstd clusters=%zu in_bytes=%zu ns=%llu mibps=%.1f us_per_cluster=%.1f\n", nz, inz,
	       (unsigned long long)(t1 - t0), nz * (double)cluster / 1048576.0 / ((t1 - t0) / 1e9),
	       (t1 - t0) / 1e3 / (double)nz);

	if (inflateInit2(&inf, -12) != Z_OK)
		return 1;
	t0 = now_ns();
	for (size_t i = 0; i < nd; i++) {
		inflateReset(&inf);
		inf.next_in = ds[i].data;
		inf.avail_in = (uInt)ds[i].len;
		inf.next_out = out;
		inf.avail_out = (uInt)cluster;
		if (inflate(&inf, Z_FINISH) != Z_STREAM_END)
			return 1;
	}
	t1 = now_ns();
	printf("algo=deflate clusters=%zu in_bytes=%zu ns=%llu mibps=%.1f us_per_cluster=%.1f\n", nd, ind,
	       (unsigned long long)(t1 - t0), nd * (double)cluster / 1048576.0 / ((t1 - t0) / 1e9),
	       (t1 - t0) / 1e3 / (double)nd);
	return 0;
}

/* ckptheap: a job with a heap to checkpoint, and a heartbeat.
 * usage: ckptheap MIB BEAT [INTERVAL_MS]
 * Fills MIB MiB of malloc'd memory, each 4 KiB page half pseudo-random
 * bytes and half a repeated 16-byte pattern (compresses to about 50%),
 * then forever: every INTERVAL_MS (default 1) writes 16 bytes at offset 0
 * of BEAT: CLOCK_MONOTONIC in ns, then a hash of one word in every page
 * (little-endian u64s), then how many times SIGUSR1 asked it to change
 * 1% of its pages (word 300 of every 100th page, outside the hashed
 * words). A process restarted from an image beats again with the same
 * hash. */
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t dirty_asked;
static void on_usr1(int sig) { (void)sig; dirty_asked++; }

int main(int argc, char **argv) {
    if (argc < 3) { fprintf(stderr, "usage: ckptheap MIB BEAT [INTERVAL_MS]\n"); return 2; }
    size_t n = (size_t)atol(argv[1]) << 20;
    long ms = argc > 3 ? atol(argv[3]) : 1;
    int fd = open(argv[2], O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) { perror(argv[2]); return 1; }
    uint64_t *m = malloc(n);
    if (!m) return 1;
    uint64_t x = 0x9E3779B97F4A7C15ull;
    const uint64_t pat[2] = {0x0123456789abcdefull, 0xfedcba9876543210ull};
    for (size_t p = 0; p < n / 8; p += 512) {
        for (int i = 0; i < 256; i++) {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            m[p + i] = x;
        }
        for (int i = 256; i < 512; i++) m[p + i] = pat[i & 1];
    }
    uint64_t h = 0;
    for (size_t p = 0; p < n / 8; p += 512) h = (h ^ m[p]) * 0x100000001b3ull;
    struct timespec d = {ms / 1000, (ms % 1000) * 1000000};
    signal(SIGUSR1, on_usr1);
    uint64_t dirtied = 0;
    for (;;) {
        struct timespec t;
        clock_gettime(CLOCK_MONOTONIC, &t);
        while (dirtied < (uint64_t)dirty_asked) {
            for (size_t p = 0; p < n / 8; p += 512 * 100) m[p + 300] += 1;
            dirtied++;
        }
        uint64_t rec[3] = {(uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec, 0, dirtied};
        uint64_t k = 0;
        for (size_t p = 0; p < n / 8; p += 512) k = (k ^ m[p]) * 0x100000001b3ull;
        rec[1] = k == h ? k : 0;
        if (pwrite(fd, rec, sizeof rec, 0) != sizeof rec) { perror("pwrite"); return 1; }
        nanosleep(&d, NULL);
    }
}

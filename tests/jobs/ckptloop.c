/* ckptloop: a job with touched memory that prints its progress.
 * usage: ckptloop MIB STEPS [OUT]
 * Fills MIB MiB with a pattern, then for STEPS steps sums a page-strided
 * sample, prints one line per step (to OUT, appended, or stdout) and
 * sleeps 50 ms. The last line depends on every step, so a job resumed
 * from a bad image prints a different one. */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

int main(int argc, char **argv) {
    size_t n = (argc > 1 ? atol(argv[1]) : 16) << 20;
    int steps = argc > 2 ? atoi(argv[2]) : 40;
    FILE *out = argc > 3 ? fopen(argv[3], "a") : stdout;
    if (!out) { perror(argv[3]); return 1; }
    unsigned char *m = malloc(n);
    if (!m) return 1;
    for (size_t i = 0; i < n; i++) m[i] = (unsigned char)(i * 7 + i / 4096);
    unsigned long sum = 0;
    for (int step = 0; step < steps; step++) {
        for (size_t i = 0; i < n; i += 4096) {
            sum = sum * 31 + (m[i] ^ step);
            m[i] = (unsigned char)sum;
        }
        fprintf(out, "step %d sum %lu\n", step, sum);
        fflush(out);
        usleep(50000);
    }
    return 0;
}

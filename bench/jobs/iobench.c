/* iobench: a job that times its own remote I/O.
 * usage: iobench FILE OUT RUNS CALLS
 * Prints one line per figure: "NAME VALUE" (medians over RUNS / CALLS), and
 * on stderr the CLOCK_MONOTONIC time each phase starts and ends, to line a
 * profile (`perf record -k CLOCK_MONOTONIC`) up with the phases. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}
static void phase(const char *name, const char *what) {
    fprintf(stderr, "phase %s %s %.6f\n", name, what, now());
}
static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}
static double median(double *v, int n) { qsort(v, n, sizeof *v, cmp); return v[n / 2]; }

int main(int argc, char **argv) {
    if (argc != 5) { fprintf(stderr, "usage: iobench FILE OUT RUNS CALLS\n"); return 2; }
    const char *file = argv[1], *out = argv[2];
    int runs = atoi(argv[3]), calls = atoi(argv[4]);
    size_t bs = 1 << 20;
    char *buf = malloc(bs);
    memset(buf, 'x', bs);

    int fd = open(file, O_RDONLY);
    if (fd < 0) { perror(file); return 1; }
    off_t size = lseek(fd, 0, SEEK_END);
    double *lat = malloc(sizeof(double) * calls);
    phase("pread1", "start");
    for (int i = 0; i < calls; i++) {
        double t0 = now();
        if (pread(fd, buf, 1, ((off_t)i * 4099) % size) != 1) { perror("pread"); return 1; }
        lat[i] = now() - t0;
    }
    phase("pread1", "end");
    printf("pread1_us %.2f\n", median(lat, calls) * 1e6);

    double *r = malloc(sizeof(double) * runs);
    phase("seqread", "start");
    for (int k = 0; k < runs; k++) {
        lseek(fd, 0, SEEK_SET);
        double t0 = now();
        size_t total = 0;
        ssize_t n;
        while ((n = read(fd, buf, bs)) > 0) total += n;
        if (n < 0 || (off_t)total != size) { perror("read"); return 1; }
        r[k] = total / (now() - t0) / 1e6;
    }
    phase("seqread", "end");
    printf("seqread_MBps %.1f\n", median(r, runs));
    close(fd);

    phase("seqwrite", "start");
    for (int k = 0; k < runs; k++) {
        double t0 = now();
        int w = open(out, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (w < 0) { perror(out); return 1; }
        size_t total = 0;
        while ((off_t)total < size) {
            ssize_t n = write(w, buf, bs);
            if (n <= 0) { perror("write"); return 1; }
            total += n;
        }
        if (close(w) != 0) { perror("close"); return 1; }
        r[k] = total / (now() - t0) / 1e6;
    }
    phase("seqwrite", "end");
    printf("seqwrite_MBps %.1f\n", median(r, runs));
    unlink(out);
    return 0;
}

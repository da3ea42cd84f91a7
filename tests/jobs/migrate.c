/* migrate: a job that reads an input file and appends to an output file
 * while it holds a large touched heap, slowly enough to be moved.
 * usage: migrate MIB INPUT OUTPUT [MS_PER_LINE [WRITE_EVERY]]
 * For every input line it mixes the line into a running hash together
 * with a page-strided walk over the heap (which it also rewrites), and
 * appends "N HASH LINE" to OUTPUT. The output depends on the whole heap
 * and on every line read, so a job resumed from a wrong image, a wrong
 * input offset or a wrong output size writes different bytes. With
 * WRITE_EVERY = K (default 1) each line rewrites only every K-th page of
 * the heap, so an incremental checkpoint has few pages to send. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 4) { fprintf(stderr, "usage: migrate MIB INPUT OUTPUT [MS]\n"); return 2; }
    size_t n = (size_t)atol(argv[1]) << 20;
    int ms = argc > 4 ? atoi(argv[4]) : 100;
    size_t every = argc > 5 ? (size_t)atol(argv[5]) : 1;
    if (every < 1) every = 1;
    unsigned char *m = malloc(n);
    if (!m) { perror("malloc"); return 1; }
    for (size_t i = 0; i < n; i++) m[i] = (unsigned char)(i * 131 + (i >> 12));
    FILE *in = fopen(argv[2], "r");
    if (!in) { perror(argv[2]); return 1; }
    int out = open(argv[3], O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (out < 0) { perror(argv[3]); return 1; }
    char line[4096];
    unsigned long h = 1469598103934665603UL;
    long no = 0;
    while (fgets(line, sizeof line, in)) {
        for (char *p = line; *p; p++) h = (h ^ (unsigned char)*p) * 1099511628211UL;
        for (size_t i = (size_t)no * 64 % 4096; i < n; i += 4096) {
            h = (h ^ m[i]) * 1099511628211UL;
            if ((i / 4096) % every == (size_t)no % every) m[i] = (unsigned char)(h >> 24);
        }
        char buf[4200];
        int len = snprintf(buf, sizeof buf, "%ld %016lx %s", no++, h, line);
        if (write(out, buf, len) != len) { perror("write"); return 1; }
        usleep(ms * 1000);
    }
    printf("done %ld lines %016lx\n", no, h);
    return 0;
}

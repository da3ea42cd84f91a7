/* TCP client for roost-bench --net: round trips per second (1-byte
 * ping-pong) and bulk MB/s to a server, RUNS times each; prints one
 * "name value" line per run.
 *
 * argv: HOST PORT CALLS MIB RUNS. Protocol: "P n\n" then n one-byte
 * exchanges; "B bytes\n" then the bytes, answered by one byte; "D bytes\n",
 * answered by the bytes. */
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static int dial(const char *host, const char *port) {
    struct addrinfo hints = {0}, *ai;
    hints.ai_family = AF_INET;
    hints.ai_socktype = SOCK_STREAM;
    if (getaddrinfo(host, port, &hints, &ai)) return -1;
    int s = socket(ai->ai_family, ai->ai_socktype, ai->ai_protocol);
    if (s < 0 || connect(s, ai->ai_addr, ai->ai_addrlen) < 0) return -1;
    int one = 1;
    setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    freeaddrinfo(ai);
    return s;
}

static int full_write(int s, const char *b, size_t n) {
    while (n) {
        ssize_t k = write(s, b, n);
        if (k <= 0) return -1;
        b += k; n -= k;
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc != 6) return 2;
    long calls = atol(argv[3]), mib = atol(argv[4]), runs = atol(argv[5]);
    static char buf[1 << 20];
    memset(buf, 'x', sizeof buf);
    for (long r = 0; r < runs; r++) {
        int s = dial(argv[1], argv[2]);
        if (s < 0) { perror("connect"); return 1; }
        char hdr[64];
        int k = snprintf(hdr, sizeof hdr, "P %ld\n", calls);
        if (full_write(s, hdr, k)) return 1;
        double t0 = now();
        for (long i = 0; i < calls; i++) {
            char c = 'p';
            if (write(s, &c, 1) != 1 || read(s, &c, 1) != 1) { perror("ping"); return 1; }
        }
        printf("round_trips_per_sec %.1f\n", calls / (now() - t0));
        close(s);
        s = dial(argv[1], argv[2]);
        if (s < 0) return 1;
        k = snprintf(hdr, sizeof hdr, "B %ld\n", mib << 20);
        if (full_write(s, hdr, k)) return 1;
        t0 = now();
        for (long i = 0; i < mib; i++)
            if (full_write(s, buf, sizeof buf)) { perror("bulk"); return 1; }
        char c;
        if (read(s, &c, 1) != 1) { perror("ack"); return 1; }
        printf("upload_mb_per_sec %.1f\n", mib * 1.048576 / (now() - t0));
        close(s);
        s = dial(argv[1], argv[2]);
        if (s < 0) return 1;
        k = snprintf(hdr, sizeof hdr, "D %ld\n", mib << 20);
        if (full_write(s, hdr, k)) return 1;
        t0 = now();
        long left = mib << 20;
        while (left > 0) {
            ssize_t n = read(s, buf, sizeof buf);
            if (n <= 0) { perror("download"); return 1; }
            left -= n;
        }
        printf("download_mb_per_sec %.1f\n", mib * 1.048576 / (now() - t0));
        close(s);
    }
    return 0;
}

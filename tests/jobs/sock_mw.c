/* A master–worker pair of one cluster, talking over TCP through their
 * shadows.
 *
 * argv: ROLE PEER N. Role 0 (the master) listens on an ephemeral port,
 * accepts one worker and answers each message "i" with "i total", where
 * total is the sum of every i received so far; it prints the number of
 * messages and the total. Role 1 (the worker) resolves PEER (the master's
 * job name, C.0), connects, sends 0..N-1 one at a time (1 ms apart), checks
 * each answer and prints the totals it was told. */
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static int master(long n) {
    int l = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (l < 0 || bind(l, (struct sockaddr *)&a, sizeof a) < 0 || listen(l, 4) < 0) {
        perror("listen");
        return 1;
    }
    int c = accept(l, NULL, NULL);
    if (c < 0) { perror("accept"); return 1; }
    FILE *in = fdopen(c, "r");
    char line[128];
    long count = 0, total = 0;
    while (count < n && fgets(line, sizeof line, in)) {
        long i = atol(line);
        total += i;
        count++;
        int k = snprintf(line, sizeof line, "%ld %ld\n", i, total);
        if (send(c, line, k, 0) != k) { perror("send"); return 1; }
    }
    printf("master: %ld messages, total %ld\n", count, total);
    return count == n ? 0 : 1;
}

static int worker(const char *peer, long n) {
    struct addrinfo hints = {0}, *ai = NULL;
    hints.ai_family = AF_INET;
    hints.ai_socktype = SOCK_STREAM;
    int s = -1;
    /* The master may not be listening yet. */
    for (int tries = 0; tries < 600 && s < 0; tries++) {
        if (getaddrinfo(peer, NULL, &hints, &ai) == 0) {
            s = socket(ai->ai_family, ai->ai_socktype, ai->ai_protocol);
            if (connect(s, ai->ai_addr, ai->ai_addrlen) < 0) { close(s); s = -1; }
            freeaddrinfo(ai);
        }
        if (s < 0) usleep(100000);
    }
    if (s < 0) { printf("worker: cannot reach %s\n", peer); return 1; }
    FILE *in = fdopen(s, "r");
    char line[128];
    long total = 0;
    for (long i = 0; i < n; i++) {
        int k = snprintf(line, sizeof line, "%ld\n", i);
        if (send(s, line, k, 0) != k) { perror("send"); return 1; }
        if (!fgets(line, sizeof line, in)) { printf("worker: master gone at %ld\n", i); return 1; }
        long j, t;
        if (sscanf(line, "%ld %ld", &j, &t) != 2 || j != i || t != total + i) {
            printf("worker: bad answer to %ld: %s", i, line);
            return 1;
        }
        total = t;
        printf("%ld %ld\n", i, t);
        usleep(1000);
    }
    printf("worker: %ld messages, total %ld\n", n, total);
    return 0;
}

int main(int argc, char **argv) {
    if (argc != 4) return 2;
    long n = atol(argv[3]);
    return atoi(argv[1]) == 0 ? master(n) : worker(argv[2], n);
}

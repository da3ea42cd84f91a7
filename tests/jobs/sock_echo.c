/* A job that streams N numbered lines through an echo server and writes
 * what comes back to stdout.
 *
 * argv: HOST PORT N. At most 64 lines are in flight; the job pauses two
 * milliseconds every 100 lines so that a checkpoint finds it mid-stream.
 * It checks each line as it comes back and exits 1 at the first line that
 * is missing, repeated or out of order. */
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc != 4) return 2;
    long n = atol(argv[3]);
    struct addrinfo hints = {0}, *ai;
    hints.ai_family = AF_INET;
    hints.ai_socktype = SOCK_STREAM;
    int e = getaddrinfo(argv[1], argv[2], &hints, &ai);
    if (e) { printf("getaddrinfo: %s\n", gai_strerror(e)); return 1; }
    int s = socket(ai->ai_family, ai->ai_socktype, ai->ai_protocol);
    if (s < 0 || connect(s, ai->ai_addr, ai->ai_addrlen) < 0) { perror("connect"); return 1; }
    FILE *in = fdopen(s, "r");
    long sent = 0, got = 0;
    char line[128];
    while (got < n) {
        while (sent < n && sent - got < 64) {
            int k = snprintf(line, sizeof line, "line %ld\n", sent);
            if (send(s, line, k, 0) != k) { perror("send"); return 1; }
            sent++;
            if (sent % 100 == 0) usleep(2000);
        }
        if (!fgets(line, sizeof line, in)) { printf("early end after %ld lines\n", got); return 1; }
        long v;
        if (sscanf(line, "line %ld", &v) != 1 || v != got) {
            printf("expected line %ld, got %s", got, line);
            return 1;
        }
        fputs(line, stdout);
        got++;
    }
    fflush(stdout);
    fprintf(stderr, "%ld lines echoed\n", got);
    return 0;
}

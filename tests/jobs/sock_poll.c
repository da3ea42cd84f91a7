/* A job that waits in poll(2) on a pipe and a remote TCP socket at once.
 *
 * argv: HOST PORT. A forked child writes to the pipe after a second; when
 * the parent wakes for it, it sends "go\n" to the server, which answers a
 * second later. The parent counts its poll wake-ups and prints them with
 * the CPU time it used: a wait that spins shows many wake-ups and CPU. */
#include <arpa/inet.h>
#include <netdb.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc != 3) return 2;
    struct addrinfo hints = {0}, *ai;
    hints.ai_family = AF_INET;
    hints.ai_socktype = SOCK_STREAM;
    int e = getaddrinfo(argv[1], argv[2], &hints, &ai);
    if (e) { printf("getaddrinfo: %s\n", gai_strerror(e)); return 1; }
    int s = socket(ai->ai_family, ai->ai_socktype, ai->ai_protocol);
    if (s < 0 || connect(s, ai->ai_addr, ai->ai_addrlen) < 0) { perror("connect"); return 1; }
    int p[2];
    if (pipe(p) < 0) return 1;
    pid_t c = fork();
    /* The child keeps its end open until the parent is done with the wait. */
    if (c == 0) { sleep(1); if (write(p[1], "p", 1) != 1) _exit(1); sleep(4); _exit(0); }
    close(p[1]);
    int wakeups = 0, got_pipe = 0, got_sock = 0;
    char buf[64];
    while (!(got_pipe && got_sock)) {
        struct pollfd fds[2] = {{p[0], POLLIN, 0}, {s, POLLIN, 0}};
        int n = poll(fds, 2, 20000);
        wakeups++;
        if (n <= 0) { printf("poll returned %d\n", n); return 1; }
        if (fds[0].revents & (POLLIN | POLLHUP)) {
            if (read(p[0], buf, sizeof buf) == 1) {
                got_pipe = 1;
                printf("woke for the pipe\n");
                if (send(s, "go\n", 3, 0) != 3) { perror("send"); return 1; }
            } else {
                close(p[0]); p[0] = -1;
                wakeups--; /* the writer's exit, not an event of the test */
            }
        }
        if (fds[1].revents & POLLIN) {
            ssize_t k = recv(s, buf, sizeof buf - 1, 0);
            if (k <= 0) { printf("socket closed\n"); return 1; }
            buf[k] = 0;
            got_sock = 1;
            printf("woke for the socket: %s", buf);
        }
    }
    kill(c, SIGKILL);
    waitpid(c, NULL, 0);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    long us = (ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000L + ru.ru_utime.tv_usec + ru.ru_stime.tv_usec;
    printf("wakeups %d cpu_us %ld\n", wakeups, us);
    return 0;
}

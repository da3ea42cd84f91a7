/* hostile_daemon: forks a daemon (setsid, a second fork, its stdio
 * closed) that would live forever, says so, and exits (or, with "stay",
 * waits for ever too).
 * usage: hostile_daemon MARKER [stay] (the daemon keeps MARKER in its
 * command line, for a test to look for it on the execute host). */
#include <string.h>
#include <stdio.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv) {
    int p[2];
    if (pipe(p) < 0) return 1;
    pid_t a = fork();
    if (a < 0) return 1;
    if (a == 0) {
        setsid();
        if (fork() == 0) {
            close(p[0]);
            close(0);
            close(1);
            close(2);
            if (write(p[1], "x", 1) != 1) _exit(1);
            close(p[1]);
            for (;;) pause();
        }
        _exit(0);
    }
    waitpid(a, NULL, 0);
    close(p[1]);
    char c;
    if (read(p[0], &c, 1) != 1) return 1;
    printf("daemon started\n");
    fflush(stdout);
    if (argc > 2 && strcmp(argv[2], "stay") == 0)
        for (;;) pause();
    return 0;
}

/* hostile_probe: a static program that bypasses any LD_PRELOAD with raw
 * system calls and reports, one line each, what the sandbox let it do.
 * usage: hostile_probe SECRET PUBLIC PORT
 * SECRET and PUBLIC are files of the execute host's owner (one private,
 * one world-readable outside the system's directories); PORT is a TCP
 * port listening on the execute host's 127.0.0.1. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <arpa/inet.h>
#include <unistd.h>

static const char *err(long r) {
    static char buf[32];
    if (r >= 0) return "OK";
    switch (errno) {
    case EACCES: return "EACCES";
    case EPERM: return "EPERM";
    case EROFS: return "EROFS";
    case ENOENT: return "ENOENT";
    case ENETUNREACH: return "ENETUNREACH";
    case ECONNREFUSED: return "ECONNREFUSED";
    default: snprintf(buf, sizeof buf, "errno %d", errno); return buf;
    }
}

static void say(const char *what, const char *result) {
    char line[256];
    int n = snprintf(line, sizeof line, "%s %s\n", what, result);
    syscall(SYS_write, 1, line, n);
}

/* Opens `path` with a raw openat and reads it: "OK:<bytes>" or the errno. */
static void try_read(const char *what, const char *path) {
    long fd = syscall(SYS_openat, AT_FDCWD, path, O_RDONLY);
    if (fd < 0) { say(what, err(fd)); return; }
    char buf[64] = {0};
    long n = syscall(SYS_read, fd, buf, sizeof buf - 1);
    char out[96];
    snprintf(out, sizeof out, "OK:%.*s", n > 0 ? (int)strcspn(buf, "\n") : 0, buf);
    say(what, out);
}

static void try_create(const char *what, const char *path) {
    long fd = syscall(SYS_open, path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd >= 0) syscall(SYS_write, fd, "x", 1);
    say(what, err(fd));
}

/* The `key:` line of /proc/self/status, its value only. */
static void status_line(const char *what, const char *key) {
    char buf[8192];
    long fd = syscall(SYS_open, "/proc/self/status", O_RDONLY);
    long n = fd < 0 ? -1 : syscall(SYS_read, fd, buf, sizeof buf - 1);
    if (n <= 0) { say(what, "unreadable"); return; }
    buf[n] = 0;
    char *l = strstr(buf, key);
    if (!l) { say(what, "absent"); return; }
    l += strlen(key);
    while (*l == ' ' || *l == '\t') l++;
    l[strcspn(l, "\n")] = 0;
    say(what, l);
}

int main(int argc, char **argv) {
    if (argc < 4) return 2;
    char num[32];
    snprintf(num, sizeof num, "%ld", syscall(SYS_getpid));
    say("pid", num);
    snprintf(num, sizeof num, "%ld", syscall(SYS_getuid));
    say("uid", num);
    try_read("read-secret", argv[1]);
    try_read("read-public", argv[2]);
    try_read("read-system", "/etc/passwd");
    try_create("write-etc", "/etc/roost-hostile-probe");
    try_create("write-var-tmp", "/var/tmp/roost-hostile-probe");
    try_create("write-dev-shm", "/dev/shm/roost-hostile-probe");
    try_create("write-scratch", "/tmp/roost-hostile-probe");
    say("ptrace", err(syscall(SYS_ptrace, PTRACE_TRACEME, 0, 0, 0)));
    say("unshare", err(syscall(SYS_unshare, CLONE_NEWUSER)));
    say("mount", err(syscall(SYS_mount, "none", "/tmp", "tmpfs", 0, 0)));
    long s = syscall(SYS_socket, AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[3]))};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    say("connect", s < 0 ? err(s) : err(syscall(SYS_connect, s, &a, sizeof a)));
    status_line("seccomp", "Seccomp:");
    status_line("no-new-privs", "NoNewPrivs:");
    return 0;
}

/* rawio IN OUT: file I/O with the raw calls only (open, read, write, lseek,
 * fstat, pread, pwrite, dup, close), no stdio. Writes a transformed copy of
 * IN to OUT and a report of what it saw to stdout; exits 0, or 1 with a
 * message on stderr when a call does not behave as POSIX says. */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int failed;

static void out(const char *fmt, ...) {
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (n > (int)sizeof buf - 1)
        n = sizeof buf - 1;
    const char *p = buf;
    while (n > 0) {
        ssize_t w = write(1, p, n);
        if (w <= 0)
            return;
        p += w;
        n -= w;
    }
}

static void fail(const char *what) {
    char buf[256];
    int n = snprintf(buf, sizeof buf, "rawio: %s: %s\n", what, strerror(errno));
    if (write(2, buf, n) < 0) {
    }
    failed = 1;
}

static void check(int ok, const char *what) {
    if (!ok) {
        char buf[256];
        int n = snprintf(buf, sizeof buf, "rawio: unexpected result: %s\n", what);
        if (write(2, buf, n) < 0) {
        }
        failed = 1;
    }
}

static int write_all(int fd, const unsigned char *p, size_t n) {
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static void hex(const char *label, const unsigned char *p, ssize_t n) {
    char buf[128];
    int k = 0;
    for (ssize_t i = 0; i < n && k < (int)sizeof buf - 3; i++)
        k += snprintf(buf + k, sizeof buf - k, "%02x", p[i]);
    buf[k] = 0;
    out("%s %s\n", label, buf);
}

int main(int argc, char **argv) {
    if (argc != 3) {
        const char *u = "usage: rawio IN OUT\n";
        if (write(2, u, strlen(u)) < 0) {
        }
        return 2;
    }
    const char *in = argv[1], *outp = argv[2];

    int fd = open(in, O_RDONLY);
    if (fd < 0) {
        fail(in);
        return 1;
    }
    struct stat st;
    if (fstat(fd, &st) < 0)
        fail("fstat IN");
    out("in: regular %d size %lld\n", S_ISREG(st.st_mode), (long long)st.st_size);

    /* Sequential reads in odd-sized chunks; FNV-1a over the bytes. */
    static unsigned char data[1 << 22];
    size_t total = 0;
    unsigned long long h = 1469598103934665603ULL;
    for (;;) {
        size_t want = 4093;
        if (total + want > sizeof data)
            want = sizeof data - total;
        if (want == 0)
            break;
        ssize_t r = read(fd, data + total, want);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            fail("read IN");
            break;
        }
        if (r == 0)
            break;
        for (ssize_t i = 0; i < r; i++)
            h = (h ^ data[total + i]) * 1099511628211ULL;
        total += (size_t)r;
    }
    out("read %zu bytes fnv %016llx\n", total, h);
    check((long long)total == (long long)st.st_size, "read total == st_size");
    check(read(fd, data, 1) == 0, "read at EOF returns 0");

    /* Seeks, and reads after them. */
    unsigned char b[32];
    off_t o = lseek(fd, 100, SEEK_SET);
    out("lseek set 100 -> %lld\n", (long long)o);
    ssize_t r = read(fd, b, 10);
    hex("at 100:", b, r);
    o = lseek(fd, 5, SEEK_CUR);
    out("lseek cur +5 -> %lld\n", (long long)o);
    o = lseek(fd, -20, SEEK_END);
    out("lseek end -20 -> %lld\n", (long long)o);
    r = read(fd, b, 32);
    out("read at end-20: %zd\n", r);
    hex("tail:", b, r);
    out("lseek cur 0 -> %lld\n", (long long)lseek(fd, 0, SEEK_CUR));

    /* pread leaves the offset alone. */
    r = pread(fd, b, 8, 50);
    hex("pread 8@50:", b, r);
    out("offset after pread %lld\n", (long long)lseek(fd, 0, SEEK_CUR));

    /* A dup shares the offset. */
    int fd2 = dup(fd);
    if (fd2 < 0)
        fail("dup");
    lseek(fd, 0, SEEK_SET);
    r = read(fd, b, 5);
    r = read(fd2, b + 5, 5);
    hex("dup reads:", b, 10);
    check(memcmp(b, data, 10) == 0, "dup shares the offset");
    close(fd2);
    close(fd);

    /* OUT: the input reversed in 777-byte pieces, patched in place. */
    int w = open(outp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (w < 0) {
        fail(outp);
        return 1;
    }
    size_t done = 0;
    while (done < total) {
        size_t n = total - done < 777 ? total - done : 777;
        unsigned char piece[777];
        for (size_t i = 0; i < n; i++)
            piece[i] = data[total - 1 - done - i];
        if (write_all(w, piece, n) < 0)
            fail("write OUT");
        done += n;
    }
    out("lseek out set 10 -> %lld\n", (long long)lseek(w, 10, SEEK_SET));
    if (write_all(w, (const unsigned char *)"PATCH", 5) < 0)
        fail("write PATCH");
    out("lseek out end -> %lld\n", (long long)lseek(w, 0, SEEK_END));
    if (write_all(w, (const unsigned char *)"END\n", 4) < 0)
        fail("write END");
    if (pwrite(w, "pw", 2, 2) != 2)
        fail("pwrite");
    struct stat ost;
    if (fstat(w, &ost) < 0)
        fail("fstat OUT");
    out("out size %lld\n", (long long)ost.st_size);
    check((long long)ost.st_size == (long long)total + 4, "fstat sees every write");
    if (close(w) < 0)
        fail("close OUT");

    /* Read back what was written. */
    int rd = open(outp, O_RDWR);
    if (rd < 0)
        fail("reopen OUT");
    r = read(rd, b, 16);
    hex("out head:", b, r);
    lseek(rd, -4, SEEK_END);
    r = read(rd, b, 4);
    check(r == 4 && memcmp(b, "END\n", 4) == 0, "out ends with END");
    close(rd);

    /* O_APPEND writes go to the end whatever the offset. */
    int ap = open(outp, O_WRONLY | O_APPEND);
    if (ap < 0)
        fail("open OUT append");
    lseek(ap, 0, SEEK_SET);
    if (write_all(ap, (const unsigned char *)"appended\n", 9) < 0)
        fail("append");
    out("append offset %lld\n", (long long)lseek(ap, 0, SEEK_CUR));
    close(ap);

    /* Errors come back as errno. */
    errno = 0;
    int bad = open("no-such-file", O_RDONLY);
    out("missing: %d %s\n", bad, strerror(errno));
    errno = 0;
    r = read(1000, b, 1);
    out("bad fd read: %zd %s\n", r, strerror(errno));

    out("done\n");
    return failed;
}

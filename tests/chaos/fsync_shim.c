/* fsync_shim.c: what a disk really holds, for the chaos suite's power-loss emulation.
 *
 * LD_PRELOADed into a redis-server (tests/chaos/powerloss.py compiles it with gcc).  It
 * wraps fsync(2) and fdatasync(2): before the real call it takes the file's size (fstat);
 * when the real call succeeds, every byte up to that size is on the disk, and it appends
 * one line to the file named by $NEPI_FSYNC_LOG:
 *
 *     <st_dev> <st_ino> <size> <CLOCK_REALTIME before the call, s.ns> <path>\n
 *
 * (path from /proc/self/fd; only regular files).  The size is taken *before* the call
 * because bytes written while the call runs may or may not be on the disk: the line is a
 * lower bound of what a power loss leaves, never more.  The line is one write(2) on an
 * O_APPEND descriptor, so lines of concurrent callers (Redis' main thread under
 * appendfsync always, its bio thread under everysec) do not mix.  It is not fsynced
 * itself: the emulation SIGKILLs the process, and the page cache keeps what was written.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static int log_fd = -1;
static int (*real_fsync)(int);
static int (*real_fdatasync)(int);

/* Before main: no thread of Redis runs yet, so nothing races the set-up. */
__attribute__((constructor)) static void shim_init(void) {
    real_fsync = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    real_fdatasync = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    const char *path = getenv("NEPI_FSYNC_LOG");
    if (path)
        log_fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
}

static int durable(int fd, int (*real)(int)) {
    struct stat st;
    struct timespec t;
    int regular = fstat(fd, &st) == 0 && S_ISREG(st.st_mode);
    clock_gettime(CLOCK_REALTIME, &t);
    int rc = real(fd);
    if (rc != 0 || !regular || log_fd < 0)
        return rc;
    int saved = errno;
    char link[64], path[4096], line[4352];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof path - 1);
    path[n < 0 ? 0 : n] = '\0';
    int len = snprintf(line, sizeof line, "%llu %llu %lld %lld.%09ld %s\n",
                       (unsigned long long)st.st_dev, (unsigned long long)st.st_ino,
                       (long long)st.st_size, (long long)t.tv_sec, t.tv_nsec, path);
    if (len > 0 && (size_t)len < sizeof line && write(log_fd, line, (size_t)len) < 0) {
        /* nothing to do: a line missing only makes the emulation cut more, never less */
    }
    errno = saved;
    return rc;
}

int fsync(int fd) { return durable(fd, real_fsync); }

int fdatasync(int fd) { return durable(fd, real_fdatasync); }

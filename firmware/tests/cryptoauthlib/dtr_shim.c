/* LD_PRELOAD shim: cryptoauthlib's Linux UART HAL asserts DTR with ioctl(TIOCMBIS), which a
 * pseudo-terminal refuses (ENOTTY/EINVAL). Modem-control requests (TIOCMBIS, TIOCMBIC,
 * TIOCMSET) succeed as no-ops here; every other ioctl goes to libc unchanged. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdarg.h>
#include <sys/ioctl.h>

typedef int (*ioctl_fn)(int, unsigned long, ...);

int ioctl(int fd, unsigned long request, ...) {
    va_list ap;
    va_start(ap, request);
    void *arg = va_arg(ap, void *);
    va_end(ap);
    if (request == TIOCMBIS || request == TIOCMBIC || request == TIOCMSET) {
        return 0;
    }
    static ioctl_fn real = 0;
    if (!real) {
        real = (ioctl_fn)dlsym(RTLD_NEXT, "ioctl");
    }
    return real(fd, request, arg);
}

/* clock_nanosleep for the suite's run under libfaketime with the monotonic clock left
 * real (faketime --exclude-monotonic, see scripts/test.sh).
 *
 * Debian 12's libfaketime 0.9.10 converts an absolute CLOCK_MONOTONIC deadline as if it
 * were a faked one even when the monotonic clock is not faked, so the kernel gets a
 * negative time and Python 3.11's time.sleep() (clock_nanosleep(CLOCK_MONOTONIC,
 * TIMER_ABSTIME, ...)) fails with EINVAL: libfaketime issue #426, fixed upstream in
 * 0.9.11. Preloaded before libfaketime, this passes monotonic sleeps straight to the
 * kernel and leaves every other clock to libfaketime. Remove it with libfaketime >= 0.9.11.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

int clock_nanosleep(clockid_t clock_id, int flags, const struct timespec *req, struct timespec *rem)
{
    if (clock_id == CLOCK_MONOTONIC) {
        /* the raw system call answers -1 and sets errno; clock_nanosleep returns the error */
        return syscall(SYS_clock_nanosleep, clock_id, flags, req, rem) == 0 ? 0 : errno;
    }
    static int (*next)(clockid_t, int, const struct timespec *, struct timespec *);
    if (next == NULL) {
        next = (int (*)(clockid_t, int, const struct timespec *, struct timespec *))dlsym(RTLD_NEXT, "clock_nanosleep");
        if (next == NULL) {
            return ENOSYS;
        }
    }
    return next(clock_id, flags, req, rem);
}

#define _GNU_SOURCE
#include "CBotSystem.h"
#include <errno.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <fcntl.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/prctl.h>
#include <sys/syscall.h>
#endif

int cbot_set_parent_death_signal(int signal) {
#ifdef __linux__
    return prctl(PR_SET_PDEATHSIG, (unsigned long)signal, 0, 0, 0);
#else
    (void)signal;
    errno = ENOSYS;
    return -1;
#endif
}

int cbot_sol_socket(void) { return SOL_SOCKET; }

int cbot_so_peercred(void) {
#ifdef SO_PEERCRED
    return SO_PEERCRED;
#else
    return -1;
#endif
}

int cbot_max_socket_path(void) {
    struct sockaddr_un address;
    return (int)sizeof(address.sun_path) - 1;
}

int cbot_pipe_cloexec(int fds[2]) {
    return pipe2(fds, O_CLOEXEC);
}

int cbot_pidfd_open(pid_t pid) {
#if defined(__linux__) && defined(SYS_pidfd_open)
    return (int)syscall(SYS_pidfd_open, pid, 0);
#else
    (void)pid;
    errno = ENOSYS;
    return -1;
#endif
}

int cbot_memfd_cloexec(const char *name) {
#ifdef __linux__
    return (int)syscall(SYS_memfd_create, name, 1U /* MFD_CLOEXEC */);
#else
    (void)name;
    errno = ENOSYS;
    return -1;
#endif
}

void cbot_store_u64(uint64_t *address, uint64_t value) { __atomic_store_n(address, value, __ATOMIC_RELEASE); }

uint64_t cbot_load_u64(const uint64_t *address) { return __atomic_load_n(address, __ATOMIC_ACQUIRE); }

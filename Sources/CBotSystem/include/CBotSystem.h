#ifndef CBOTSYSTEM_H
#define CBOTSYSTEM_H
#include <stdint.h>
#include <sys/types.h>

/// Asks the kernel to send `signal` to this process when its parent thread exits (Linux PR_SET_PDEATHSIG).
/// Returns 0 on success, -1 with errno set otherwise (always -1 on platforms without it).
int cbot_set_parent_death_signal(int signal);

/// The credentials of a Unix-domain socket's peer, laid out as Linux's `struct ucred`.
typedef struct {
    pid_t pid;
    uid_t uid;
    gid_t gid;
} cbot_ucred;

/// The socket level and option name that read `cbot_ucred` with getsockopt (SOL_SOCKET, SO_PEERCRED).
int cbot_sol_socket(void);
int cbot_so_peercred(void);

/// The longest path a Unix-domain socket address holds, without its terminating NUL (sizeof(sun_path) - 1).
int cbot_max_socket_path(void);

/// pipe2(fds, O_CLOEXEC): a pipe whose ends are not inherited by spawned processes unless duplicated.
int cbot_pipe_cloexec(int fds[2]);

/// A file descriptor that becomes readable when process `pid` (a child of this process) exits (Linux 5.3+
/// pidfd_open). -1 with errno set otherwise.
int cbot_pidfd_open(pid_t pid);

/// memfd_create(name, MFD_CLOEXEC): an anonymous shared-memory file (Linux 3.17+). -1 with errno set otherwise.
int cbot_memfd_cloexec(const char *name);

/// An atomic 64-bit store with release order, and a load with acquire order: one word shared between processes
/// through a mapping, never torn.
void cbot_store_u64(uint64_t *address, uint64_t value);
uint64_t cbot_load_u64(const uint64_t *address);

#endif

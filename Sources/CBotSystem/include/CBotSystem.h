#ifndef CBOTSYSTEM_H
#define CBOTSYSTEM_H
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

#endif

//! Empty programs on Gatekeeper's hooks, for `cargo xtask bench` only: the floor an LSM program
//! costs on each hook, measured next to the real one in the same guest. The daemon never loads
//! them. Hooks of `gatekeeper_common::LATER_PROGRAMS` have none: the bench does not reach them.
//!
//! Where the real program reads the previous verdict, its floor returns it, so both do the least
//! a chaining program must; the others allow, as their real counterparts do on the common path.

use aya_ebpf::{macros::lsm, programs::LsmContext};

#[lsm(hook = "bprm_check_security")]
pub fn floor_bprm_check_security(ctx: LsmContext) -> i32 {
    ctx.arg(1)
}

#[lsm(hook = "socket_connect")]
pub fn floor_socket_connect(ctx: LsmContext) -> i32 {
    ctx.arg(3)
}

#[lsm(hook = "socket_sendmsg")]
pub fn floor_socket_sendmsg(ctx: LsmContext) -> i32 {
    ctx.arg(3)
}

#[lsm(hook = "bpf")]
pub fn floor_bpf(_ctx: LsmContext) -> i32 {
    0
}

#[lsm(hook = "task_kill")]
pub fn floor_task_kill(_ctx: LsmContext) -> i32 {
    0
}

#[lsm(hook = "ptrace_access_check")]
pub fn floor_ptrace_access_check(_ctx: LsmContext) -> i32 {
    0
}

#[lsm(hook = "inode_unlink")]
pub fn floor_inode_unlink(_ctx: LsmContext) -> i32 {
    0
}

#[lsm(hook = "inode_rename")]
pub fn floor_inode_rename(_ctx: LsmContext) -> i32 {
    0
}

#[lsm(hook = "sb_umount")]
pub fn floor_sb_umount(_ctx: LsmContext) -> i32 {
    0
}

#[lsm(hook = "sb_remount")]
pub fn floor_sb_remount(_ctx: LsmContext) -> i32 {
    0
}

#[lsm(hook = "inode_permission")]
pub fn floor_inode_permission(_ctx: LsmContext) -> i32 {
    0
}

#[lsm(hook = "kernel_read_file")]
pub fn floor_kernel_read_file(_ctx: LsmContext) -> i32 {
    0
}

#[lsm(hook = "kernel_load_data")]
pub fn floor_kernel_load_data(_ctx: LsmContext) -> i32 {
    0
}

#[lsm(hook = "mmap_file")]
pub fn floor_mmap_file(_ctx: LsmContext) -> i32 {
    0
}

#[lsm(hook = "file_open")]
pub fn floor_file_open(ctx: LsmContext) -> i32 {
    ctx.arg(1)
}

#[lsm(hook = "inode_link")]
pub fn floor_inode_link(ctx: LsmContext) -> i32 {
    ctx.arg(3)
}

#[lsm(hook = "path_truncate")]
pub fn floor_path_truncate(ctx: LsmContext) -> i32 {
    ctx.arg(1)
}

#[lsm(hook = "socket_create")]
pub fn floor_socket_create(ctx: LsmContext) -> i32 {
    ctx.arg(4)
}

#[lsm(hook = "unix_stream_connect")]
pub fn floor_unix_stream_connect(ctx: LsmContext) -> i32 {
    ctx.arg(3)
}

#[lsm(hook = "unix_may_send")]
pub fn floor_unix_may_send(ctx: LsmContext) -> i32 {
    ctx.arg(2)
}

#[lsm(hook = "sb_mount")]
pub fn floor_sb_mount(_ctx: LsmContext) -> i32 {
    0
}

#[lsm(hook = "move_mount")]
pub fn floor_move_mount(_ctx: LsmContext) -> i32 {
    0
}

#[lsm(hook = "sb_pivotroot")]
pub fn floor_sb_pivotroot(_ctx: LsmContext) -> i32 {
    0
}

#[lsm(hook = "sb_set_mnt_opts")]
pub fn floor_sb_set_mnt_opts(_ctx: LsmContext) -> i32 {
    0
}

#[lsm(hook = "ptrace_traceme")]
pub fn floor_ptrace_traceme(_ctx: LsmContext) -> i32 {
    0
}

#[lsm(hook = "task_setrlimit")]
pub fn floor_task_setrlimit(_ctx: LsmContext) -> i32 {
    0
}

#[lsm(hook = "task_setscheduler")]
pub fn floor_task_setscheduler(_ctx: LsmContext) -> i32 {
    0
}

#[lsm(hook = "task_setnice")]
pub fn floor_task_setnice(_ctx: LsmContext) -> i32 {
    0
}

#[lsm(hook = "task_setioprio")]
pub fn floor_task_setioprio(_ctx: LsmContext) -> i32 {
    0
}

#[lsm(hook = "task_movememory")]
pub fn floor_task_movememory(_ctx: LsmContext) -> i32 {
    0
}

#[lsm(hook = "kernel_module_request")]
pub fn floor_kernel_module_request(_ctx: LsmContext) -> i32 {
    0
}

#[lsm(hook = "path_chmod")]
pub fn floor_path_chmod(_ctx: LsmContext) -> i32 {
    0
}

#[lsm(hook = "path_chown")]
pub fn floor_path_chown(_ctx: LsmContext) -> i32 {
    0
}

#[lsm(hook = "inode_setxattr")]
pub fn floor_inode_setxattr(_ctx: LsmContext) -> i32 {
    0
}

#[lsm(hook = "inode_removexattr")]
pub fn floor_inode_removexattr(_ctx: LsmContext) -> i32 {
    0
}

#[lsm(hook = "file_ioctl")]
pub fn floor_file_ioctl(ctx: LsmContext) -> i32 {
    ctx.arg(3)
}

#[lsm(hook = "file_ioctl_compat")]
pub fn floor_file_ioctl_compat(ctx: LsmContext) -> i32 {
    ctx.arg(3)
}

#[lsm(hook = "capable")]
pub fn floor_capable(ctx: LsmContext) -> i32 {
    ctx.arg(4)
}

#[lsm(hook = "fs_context_parse_param")]
pub fn floor_fs_context_parse_param(ctx: LsmContext) -> i32 {
    ctx.arg(2)
}

#[lsm(hook = "inode_setattr")]
pub fn floor_inode_setattr(_ctx: LsmContext) -> i32 {
    0
}

#[lsm(hook = "inode_rmdir")]
pub fn floor_inode_rmdir(_ctx: LsmContext) -> i32 {
    0
}

#[lsm(hook = "bprm_creds_for_exec")]
pub fn floor_bprm_creds_for_exec(ctx: LsmContext) -> i32 {
    ctx.arg(1)
}

#[lsm(hook = "bprm_committing_creds")]
pub fn floor_bprm_committing_creds(_ctx: LsmContext) -> i32 {
    0
}

#[lsm(hook = "bprm_committed_creds")]
pub fn floor_bprm_committed_creds(_ctx: LsmContext) -> i32 {
    0
}

#[lsm(hook = "file_send_sigiotask")]
pub fn floor_file_send_sigiotask(_ctx: LsmContext) -> i32 {
    0
}

#[lsm(hook = "path_notify")]
pub fn floor_path_notify(_ctx: LsmContext) -> i32 {
    0
}

#[lsm(hook = "file_fcntl")]
pub fn floor_file_fcntl(_ctx: LsmContext) -> i32 {
    0
}

#[lsm(hook = "inode_create")]
pub fn floor_inode_create(ctx: LsmContext) -> i32 {
    ctx.arg(3)
}

#[lsm(hook = "inode_mknod")]
pub fn floor_inode_mknod(ctx: LsmContext) -> i32 {
    ctx.arg(4)
}

#[lsm(hook = "inode_symlink")]
pub fn floor_inode_symlink(ctx: LsmContext) -> i32 {
    ctx.arg(3)
}

#[lsm(hook = "inode_mkdir")]
pub fn floor_inode_mkdir(ctx: LsmContext) -> i32 {
    ctx.arg(3)
}

#[lsm(hook = "perf_event_open")]
pub fn floor_perf_event_open(_ctx: LsmContext) -> i32 {
    0
}

#[lsm(hook = "syslog")]
pub fn floor_syslog(ctx: LsmContext) -> i32 {
    ctx.arg(1)
}

#[lsm(hook = "key_alloc")]
pub fn floor_key_alloc(ctx: LsmContext) -> i32 {
    ctx.arg(3)
}

#[lsm(hook = "key_permission")]
pub fn floor_key_permission(ctx: LsmContext) -> i32 {
    ctx.arg(3)
}

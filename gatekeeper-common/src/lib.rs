//! Types shared by the Gatekeeper kernel programs and the daemon.
//!
//! Everything here is `#[repr(C)]` with explicit padding fields so the kernel and userspace agree
//! on the layout byte for byte. The `user` feature adds `aya::Pod` for the map types.
#![no_std]

/// Map names, shared so the daemon finds what the kernel program declares.
pub mod maps {
    /// The [`crate::btrfs`] slots (u32 each), written by the daemon, not pinned: what the
    /// programs need to read a btrfs inode's own device number.
    pub const BTRFS: &str = "BTRFS";
    /// The superblock's device number (u32, kernel encoding) of each btrfs a directory rule or
    /// mount guard is on -> 1, not pinned: a btrfs file is walked up from only there (the walk
    /// crosses subvolumes, each of a device number of its own, so no per-device marker serves);
    /// elsewhere it is judged by its own rule alone. Device 0 stands for every btrfs: the
    /// daemon's answer when it cannot tell a rule's, or the map is full.
    pub const BTRFS_RULE_DEVICES: &str = "BTRFS_RULE_DEVICES";
    /// The device number (u32, kernel encoding) of each superblock a mount outside the agents
    /// got since the programs were loaded -> how many times, counted by the kernel, not pinned.
    /// A device number is given to a new file system once the old one is gone, and the
    /// daemon's marks (by device and inode) say nothing of the new one.
    pub const MADE_DEVICES: &str = "MADE_DEVICES";
    /// Device number -> the count of [`MADE_DEVICES`] the daemon read before it last looked at
    /// its paths, written by the daemon, not pinned: a file system on a device made again since
    /// hides the place it is mounted over until the daemon has looked.
    pub const LOOKED_DEVICES: &str = "LOOKED_DEVICES";
    /// [`crate::mount_count`] slots (u64 each), not pinned: how many times a file system was
    /// attached in the host's namespace, or on a shared mount elsewhere, from which it may
    /// propagate there (a mount, bind or move, which may bring one made before the daemon's last
    /// look to a place it cares about), that count as the daemon last read it before a look,
    /// and the count of the last attach whose place the kernel could not keep, or superblock
    /// it could not count in [`MADE_DEVICES`]. (The kernel keeps each attach's count by its
    /// place, in a map of its own.)
    pub const MOUNT_COUNTS: &str = "MOUNT_COUNTS";
    /// [`crate::Target`] (exec form: device, inode) -> 1 for every directory above a mount
    /// point of the host's namespace, as the daemon last read its mount table, not pinned:
    /// renaming one would move the host's mounts below it (the kernel refuses only a rename of
    /// the mount point itself, and only in the caller's namespace).
    pub const MOUNT_ANCESTORS: &str = "MOUNT_ANCESTORS";
    /// cgroup id (u64) -> 1 for every configured agent cgroup.
    pub const AGENT_CGROUPS: &str = "AGENT_CGROUPS";
    /// [`crate::Target`] -> rule index (u32) for every protected exec target.
    pub const PROTECTED: &str = "PROTECTED";
    /// Longest-prefix-match trie: IPv6 (or IPv4-mapped) prefix -> [`crate::PortRanges`].
    pub const PROTECTED_NETS: &str = "PROTECTED_NETS";
    /// [`crate::GrantKey`] -> [`crate::GrantValue`]: single-use approvals.
    pub const GRANTS: &str = "GRANTS";
    /// Ring buffer of [`crate::Event`].
    pub const EVENTS: &str = "EVENTS";
    /// Per-CPU counters, indexed by [`crate::Counter`].
    pub const COUNTERS: &str = "COUNTERS";
    /// tgid (u32) -> 1 for the daemon: agents may not signal or trace it.
    pub const DAEMON_PIDS: &str = "DAEMON_PIDS";
    /// [`crate::Target`] -> 1 for binaries agents may run in allowlist mode.
    pub const ALLOWED: &str = "ALLOWED";
    /// Array of u32 settings, indexed by [`crate::Setting`].
    pub const SETTINGS: &str = "SETTINGS";
    /// [`crate::Target`] (exec form: device, inode) -> [`crate::daemon_file`] bits: the files the
    /// daemon relies on, and the directories above them.
    pub const DAEMON_FILES: &str = "DAEMON_FILES";
    /// [`crate::Target`] (exec form: device, inode) -> [`crate::file_rule`] bits: the files and
    /// directories of `[[protect.file]]`, and one entry per device that holds a directory rule.
    pub const PROTECTED_FILES: &str = "PROTECTED_FILES";
    /// One [`crate::ArgvKey`]: the secret that keys [`crate::ArgvHasher`], set once by the daemon.
    pub const ARGV_KEY: &str = "ARGV_KEY";
    /// Grant id (with [`crate::GRANT_BINDS_ARGV`]) -> the [`crate::ArgvHasher`] hash of the
    /// arguments it was approved for.
    pub const ARGV_GRANTS: &str = "ARGV_GRANTS";
    /// [`crate::EnvName`] -> 1 for each of [`crate::APPROVED_ENV`]: the only variables an exec on
    /// a grant may pass.
    pub const APPROVED_ENV: &str = "APPROVED_ENV";
    /// Cookie of the daemon's end of a connection to the agents' socket (u64) -> the cgroup id
    /// (u64) the agent connected from.
    pub const AGENT_CONNECTIONS: &str = "AGENT_CONNECTIONS";
    /// [`crate::NameKey`] -> 1 for each name agents may not make (see [`crate::NameKey`]).
    pub const GUARDED_NAMES: &str = "GUARDED_NAMES";
    /// [`crate::raw_device_key`] -> a [`crate::raw_device`] value for each character device,
    /// or each major with all its minors, that agents may not open or that the kernel had
    /// registered when the daemon last looked.
    pub const RAW_DEVICES: &str = "RAW_DEVICES";
}

/// The kernel struct members the programs read, each as (global that receives its byte offset,
/// struct, member): the one list from which both the kernel's globals and the daemon's lookups
/// are generated. Rust-built BPF carries no CO-RE relocations, so the daemon reads the offsets from
/// the running kernel's BTF and writes them into these read-only globals before loading.
///
/// Invoke with the name of a macro that takes the rows: `kernel_members!(my_macro)` expands to
/// `my_macro! { (OFF_BPRM_FILE, "linux_binprm", "file"), ... }`.
#[macro_export]
macro_rules! kernel_members {
    ($then:ident) => {
        $then! {
            (OFF_BPRM_FILE, "linux_binprm", "file"),
            (OFF_BPRM_FILENAME, "linux_binprm", "filename"),
            (OFF_BPRM_BUF, "linux_binprm", "buf"),
            // The new program's arguments: their count and where they start on its stack.
            (OFF_BPRM_ARGC, "linux_binprm", "argc"),
            (OFF_BPRM_P, "linux_binprm", "p"),
            // How many environment strings follow the arguments there, and where the file name
            // the kernel copied above them starts.
            (OFF_BPRM_ENVC, "linux_binprm", "envc"),
            (OFF_BPRM_EXEC, "linux_binprm", "exec"),
            // Set once the file the caller named turned out to need an interpreter.
            (OFF_BPRM_EXECUTABLE, "linux_binprm", "executable"),
            (OFF_FILE_INODE, "file", "f_inode"),
            (OFF_INODE_INO, "inode", "i_ino"),
            (OFF_INODE_SB, "inode", "i_sb"),
            (OFF_SB_DEV, "super_block", "s_dev"),
            (OFF_SOCKET_SK, "socket", "sk"),
            (OFF_SOCK_PROTOCOL, "sock", "sk_protocol"),
            (OFF_MSGHDR_NAME, "msghdr", "msg_name"),
            (OFF_MSGHDR_FLAGS, "msghdr", "msg_flags"),
            (OFF_TASK_TGID, "task_struct", "tgid"),
            (OFF_SB_MAGIC, "super_block", "s_magic"),
            // Whether a superblock reads a device: its block device, its type's flags.
            (OFF_SB_BDEV, "super_block", "s_bdev"),
            (OFF_SB_TYPE, "super_block", "s_type"),
            (OFF_FS_TYPE_FLAGS, "file_system_type", "fs_flags"),
            (OFF_VFSMOUNT_SB, "vfsmount", "mnt_sb"),
            (OFF_VFSMOUNT_ROOT, "vfsmount", "mnt_root"),
            (OFF_VFSMOUNT_FLAGS, "vfsmount", "mnt_flags"),
            (OFF_FILE_PATH, "file", "f_path"),
            (OFF_PATH_MNT, "path", "mnt"),
            (OFF_TASK_MM, "task_struct", "mm"),
            (OFF_MM_EXE_FILE, "mm_struct", "exe_file"),
            (OFF_FILE_MODE, "file", "f_mode"),
            (OFF_FILE_FLAGS, "file", "f_flags"),
            (OFF_DENTRY_INODE, "dentry", "d_inode"),
            (OFF_PATH_DENTRY, "path", "dentry"),
            (OFF_INODE_MODE, "inode", "i_mode"),
            (OFF_INODE_RDEV, "inode", "i_rdev"),
            (OFF_TASK_PTRACE, "task_struct", "ptrace"),
            (OFF_TASK_FLAGS, "task_struct", "flags"),
            // Credentials a kernel service put over the task's own (overlayfs opening below).
            (OFF_TASK_CRED, "task_struct", "cred"),
            (OFF_TASK_REAL_CRED, "task_struct", "real_cred"),
            (OFF_DENTRY_NAME, "dentry", "d_name"),
            (OFF_QSTR_NAME, "qstr", "name"),
            (OFF_DENTRY_PARENT, "dentry", "d_parent"),
            (OFF_DENTRY_FLAGS, "dentry", "d_flags"),
            (OFF_UNIX_PATH, "unix_sock", "path"),
            (OFF_UNIX_PEER, "unix_sock", "peer"),
            // Mounts: which namespace the caller is in, and how a mount propagates.
            (OFF_TASK_NSPROXY, "task_struct", "nsproxy"),
            (OFF_NSPROXY_MNT_NS, "nsproxy", "mnt_ns"),
            (OFF_MNT_NS_NS, "mnt_namespace", "ns"),
            (OFF_NS_COMMON_INUM, "ns_common", "inum"),
            (OFF_MOUNT_MNT, "mount", "mnt"),
            (OFF_MOUNT_PARENT, "mount", "mnt_parent"),
            (OFF_MOUNT_MOUNTPOINT, "mount", "mnt_mountpoint"),
            (OFF_MOUNT_NS, "mount", "mnt_ns"),
            (OFF_MOUNT_MOUNTS, "mount", "mnt_mounts"),
            (OFF_MOUNT_CHILD, "mount", "mnt_child"),
            (OFF_MOUNT_INSTANCE, "mount", "mnt_instance"),
            (OFF_SB_MOUNTS, "super_block", "s_mounts"),
            (OFF_LIST_HEAD_NEXT, "list_head", "next"),
            (OFF_TASK_CGROUPS, "task_struct", "cgroups"),
            (OFF_CSS_SET_DFL_CGRP, "css_set", "dfl_cgrp"),
            (OFF_CGROUP_KN, "cgroup", "kn"),
            (OFF_KERNFS_NODE_ID, "kernfs_node", "id"),
            (OFF_KERNFS_NODE_PARENT, "kernfs_node", "parent"),
            (OFF_PROC_INODE_VFS_INODE, "proc_inode", "vfs_inode"),
            (OFF_PROC_INODE_PID, "proc_inode", "pid"),
            (OFF_PROC_INODE_SYSCTL, "proc_inode", "sysctl"),
            (OFF_PID_TASKS, "pid", "tasks"),
            (OFF_TASK_PID_LINKS, "task_struct", "pid_links"),
            (OFF_CTL_HEADER_SET, "ctl_table_header", "set"),
            (OFF_NSPROXY_NET_NS, "nsproxy", "net_ns"),
            (OFF_NET_SYSCTLS, "net", "sysctls"),
            (OFF_NET_NS, "net", "ns"),
            (OFF_USER_NS_LEVEL, "user_namespace", "level"),
            // The system call a hook runs in (x86-64).
            (OFF_PT_REGS_ORIG_AX, "pt_regs", "orig_ax"),
            // Where execve and execveat callers pass their argument vector.
            (OFF_PT_REGS_CX, "pt_regs", "cx"),
            (OFF_PT_REGS_DX, "pt_regs", "dx"),
            (OFF_PT_REGS_SI, "pt_regs", "si"),
            // The first argument of an x86-64 and of a 32-bit system call (keyctl's command).
            (OFF_PT_REGS_DI, "pt_regs", "di"),
            (OFF_PT_REGS_BX, "pt_regs", "bx"),
            // Where execveat callers pass their environment.
            (OFF_PT_REGS_R10, "pt_regs", "r10"),
            // The type of a file system being mounted.
            (OFF_FS_CONTEXT_FS_TYPE, "fs_context", "fs_type"),
            (OFF_FS_TYPE_NAME, "file_system_type", "name"),
            // Where a file sits below the protected directories: its file system's root, the
            // name (alias) of a directory's inode, and what a change of attributes changes.
            (OFF_SB_ROOT, "super_block", "s_root"),
            (OFF_INODE_DENTRY, "inode", "i_dentry"),
            // `d_u.d_alias`, the first member of the union `d_u`.
            (OFF_DENTRY_ALIAS, "dentry", "d_u"),
            (OFF_IATTR_VALID, "iattr", "ia_valid"),
            // Where an approved exec looks for its loader and libraries: the caller's root.
            (OFF_TASK_FS, "task_struct", "fs"),
            (OFF_FS_ROOT, "fs_struct", "root"),
            // How many tasks share that root: another could move it during the exec.
            (OFF_FS_USERS, "fs_struct", "users"),
            // Which process image an approved script's interpreter is: the process (its
            // leader's start time, which exec keeps) and how many execs it has made.
            (OFF_TASK_GROUP_LEADER, "task_struct", "group_leader"),
            (OFF_TASK_START_TIME, "task_struct", "start_time"),
            (OFF_TASK_SELF_EXEC_ID, "task_struct", "self_exec_id"),
            (OFF_TASK_REAL_PARENT, "task_struct", "real_parent"),
            // Seccomp filters whose system calls a listener answers (user notification).
            (OFF_TASK_SECCOMP, "task_struct", "seccomp"),
            (OFF_SECCOMP_FILTER, "seccomp", "filter"),
            (OFF_SECCOMP_FILTER_PREV, "seccomp_filter", "prev"),
            (OFF_SECCOMP_FILTER_NOTIF, "seccomp_filter", "notif"),
            // A process's resource limits (`signal->rlim`, an array of `struct rlimit`).
            (OFF_TASK_SIGNAL, "task_struct", "signal"),
            (OFF_SIGNAL_RLIM, "signal_struct", "rlim"),
            // A process's controlling terminal (a `tty_struct`, or null).
            (OFF_SIGNAL_TTY, "signal_struct", "tty"),
            // Perf events watching a task: its event contexts (two pointers on 6.1, hardware and
            // software, one since 6.2: they fill the space up to `perf_event_mutex`) and how many
            // events a context holds.
            (OFF_TASK_PERF_EVENT_CTXP, "task_struct", "perf_event_ctxp"),
            (OFF_TASK_PERF_EVENT_MUTEX, "task_struct", "perf_event_mutex"),
            (OFF_PERF_CTX_NR_EVENTS, "perf_event_context", "nr_events"),
            // A key's description and type (in an anonymous struct of a union), set before
            // `key_alloc`, and the type's name.
            (OFF_KEY_DESCRIPTION, "key", "description"),
            (OFF_KEY_TYPE, "key", "type"),
            (OFF_KEY_TYPE_NAME, "key_type", "name"),
            // The terminal behind a tty file (/dev/tty): its driver's numbers and its index.
            (OFF_FILE_PRIVATE_DATA, "file", "private_data"),
            (OFF_TTY_FILE_PRIVATE_TTY, "tty_file_private", "tty"),
            (OFF_TTY_DRIVER, "tty_struct", "driver"),
            (OFF_TTY_INDEX, "tty_struct", "index"),
            (OFF_TTY_DRIVER_MAJOR, "tty_driver", "major"),
            (OFF_TTY_DRIVER_MINOR_START, "tty_driver", "minor_start"),
        }
    };
}

/// Entries of [`maps::MADE_DEVICES`] and [`maps::LOOKED_DEVICES`]: device numbers in use at
/// once on a host with many containers, each with several file systems of its own.
pub const MAX_MADE_DEVICES: u32 = 16384;

/// Mount points whose last attach the kernel keeps (least recently used ones go first): far
/// more than a host attaches at while the daemon looks once.
pub const MAX_ATTACHED_PLACES: u32 = 16384;

/// Directories above the host's mount points the daemon keeps in [`maps::MOUNT_ANCESTORS`]
/// (a host with thousands of container mounts has about as many): past that, agents rename no
/// directory at all ([`mount_count::ANCESTORS_UNKNOWN`]).
pub const MAX_MOUNT_ANCESTORS: u32 = 16384;

/// Slots of [`maps::MOUNT_COUNTS`].
pub mod mount_count {
    /// Attaches that may reach the host's namespace: the kernel's.
    pub const MADE: u32 = 0;
    /// [`MADE`] as read before the daemon's last look: the daemon's.
    pub const LOOKED: u32 = 1;
    /// [`MADE`] at the last attach whose place was not kept, or superblock not counted by
    /// device: every mount waits for a look past it. The kernel's.
    pub const UNPLACED: u32 = 2;
    /// [`MADE`] at the last unmount, move or rename that showed a place the rules care about:
    /// while it is past [`LOOKED`], agents' opens look for such places above them. The
    /// kernel's.
    pub const REVEALED: u32 = 3;
    /// [`MADE`] at the last such change whose place was not kept: every open waits. The
    /// kernel's.
    pub const REVEALED_UNPLACED: u32 = 4;
    /// [`MADE`] at the last attach, or trusted rename of a directory above a host mount point:
    /// host mounts may be below directories [`crate::maps::MOUNT_ANCESTORS`] does not hold yet.
    /// The kernel's.
    pub const ATTACHED: u32 = 5;
    /// [`MADE`] as read before the daemon last read the mount table for
    /// [`crate::maps::MOUNT_ANCESTORS`]: while [`ATTACHED`] is past it, agents rename no
    /// directory. The daemon's.
    pub const ANCESTORS_LOOKED: u32 = 6;
    /// Non-zero until the daemon has read the mount table for [`crate::maps::MOUNT_ANCESTORS`]
    /// since the programs were loaded, and while it could not look at or keep every directory
    /// above a host mount point: agents rename no directory. The daemon's.
    pub const ANCESTORS_UNKNOWN: u32 = 7;
    pub const SLOTS: u32 = 8;
}

/// Where a btrfs inode's subvolume keeps the device number `stat` reports for its files (btrfs
/// numbers each subvolume's files itself, under one superblock): slots of [`maps::BTRFS`]. The
/// offsets come from the btrfs module's BTF, or the kernel's when btrfs is built in, at the
/// daemon's start or once btrfs is loaded; zero until then, and the programs read no btrfs
/// struct (nothing the daemon keyed was on btrfs).
pub mod btrfs {
    /// Byte offset of `root` in `struct btrfs_inode`.
    pub const INODE_ROOT: u32 = 0;
    /// Byte offset of `vfs_inode` in `struct btrfs_inode`, written last (whatever the order of
    /// [`MEMBERS`]): never zero once known.
    pub const INODE_VFS_INODE: u32 = 1;
    /// Byte offset of `anon_dev` in `struct btrfs_root`.
    pub const ROOT_ANON_DEV: u32 = 2;
    pub const SLOTS: u32 = 3;
    /// btrfs file systems (their superblocks) [`crate::maps::BTRFS_RULE_DEVICES`] can hold.
    pub const MAX_RULE_DEVICES: u32 = 256;

    /// The offsets' slots, each with its struct and member as BTF names them.
    pub const MEMBERS: [(u32, &str, &str); 3] = [
        (INODE_ROOT, "btrfs_inode", "root"),
        (ROOT_ANON_DEV, "btrfs_root", "anon_dev"),
        (INODE_VFS_INODE, "btrfs_inode", "vfs_inode"),
    ];
}

/// Names of the offset globals, and [`offsets::MEMBERS`], which the daemon iterates to fill them.
pub mod offsets {
    /// A struct member whose offset the kernel programs need.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Member {
        /// The program's global that receives the offset.
        pub global: &'static str,
        /// The kernel struct, as BTF names it.
        pub structure: &'static str,
        pub member: &'static str,
    }

    macro_rules! names_and_members {
        ($(($global:ident, $structure:literal, $member:literal)),* $(,)?) => {
            $(pub const $global: &str = stringify!($global);)*

            pub const MEMBERS: [Member; [$(stringify!($global)),*].len()] = [$(Member {
                global: stringify!($global),
                structure: $structure,
                member: $member,
            }),*];
        };
    }

    crate::kernel_members!(names_and_members);
}

/// Hook arguments whose position differs between kernels. The daemon finds it in the kernel's
/// BTF (the hook's `bpf_lsm_` function) and writes it into the program's global before loading.
pub mod hook_args {
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct HookArg {
        /// The program's global that receives the argument's index.
        pub global: &'static str,
        /// The BPF LSM function of the hook, as BTF names it.
        pub function: &'static str,
        /// How many arguments come after it (the hook's return-value slot not counted).
        pub from_last: usize,
    }

    /// `inode_setattr`'s dentry: (dentry, attr) on 6.1, (idmap, dentry, attr) since 6.3.
    pub const INODE_SETATTR_DENTRY: HookArg = HookArg {
        global: "ARG_INODE_SETATTR_DENTRY",
        function: "bpf_lsm_inode_setattr",
        from_last: 1,
    };

    /// `perf_event_open`'s check: (attr, type) on 6.1, (type) since 6.12.
    pub const PERF_EVENT_OPEN_TYPE: HookArg = HookArg {
        global: "ARG_PERF_EVENT_OPEN_TYPE",
        function: "bpf_lsm_perf_event_open",
        from_last: 0,
    };

    pub const ALL: [HookArg; 2] = [INODE_SETATTR_DENTRY, PERF_EVENT_OPEN_TYPE];
}

/// LSM programs, each named after the hook it attaches to.
pub const EXEC_PROGRAM: &str = "bprm_check_security";
pub const CONNECT_PROGRAM: &str = "socket_connect";
pub const SENDMSG_PROGRAM: &str = "socket_sendmsg";
pub const PROGRAMS: [&str; 55] = [
    EXEC_PROGRAM,
    CONNECT_PROGRAM,
    SENDMSG_PROGRAM,
    // Self-defence: what an agent could use to switch Gatekeeper off or walk around it.
    "bpf",
    "task_kill",
    "file_send_sigiotask",
    "path_notify",
    "file_fcntl",
    "ptrace_access_check",
    "inode_unlink",
    "inode_rename",
    "sb_umount",
    "sb_remount",
    "inode_permission",
    "kernel_read_file",
    "kernel_load_data",
    "mmap_file",
    // Files: protected code is read only through an approved exec; protected, allowlisted and
    // the daemon's own files are not changed by agents.
    "file_open",
    "inode_link",
    "path_truncate",
    // No side door on the network: sockets agents may not have, unix sockets at protected paths.
    "socket_create",
    "unix_stream_connect",
    "unix_may_send",
    // Mounts (with sb_umount and sb_remount above): nothing that changes what the host sees.
    "sb_mount",
    "move_mount",
    "sb_pivotroot",
    "sb_set_mnt_opts",
    // Processes outside the agent's subtree, and the daemon's resources.
    "ptrace_traceme",
    "task_setrlimit",
    "task_setscheduler",
    "task_setnice",
    "task_setioprio",
    "task_movememory",
    "kernel_module_request",
    // Files, continued: modes, owners and extended attributes.
    "path_chmod",
    "path_chown",
    "inode_setxattr",
    "inode_removexattr",
    // Inode flags (chattr) and fs-verity on files agents may not change, also from 32-bit code.
    "file_ioctl",
    "file_ioctl_compat",
    // The host's network configuration, and mount_setattr(2), which has no hook of its own.
    "capable",
    // Network file systems through fsconfig, before they contact a server.
    "fs_context_parse_param",
    // Changes of size, mode, owner and times on the inode itself, also made on an agent's
    // behalf by a stacking file system (an overlay whose upper layer holds a guarded file).
    "inode_setattr",
    // Removing a protected directory, whose path another could then take.
    "inode_rmdir",
    // An exec let through on a grant for certain arguments runs with exactly those, and with
    // approved environment variables alone: checked on the new program's own copy once nothing
    // else can change it.
    "bprm_creds_for_exec",
    "bprm_committing_creds",
    "bprm_committed_creds",
    // Names host programs trust, made by an agent while they are missing; hard links and
    // renames to them are judged at inode_link and inode_rename above.
    "inode_create",
    "inode_mknod",
    "inode_symlink",
    "inode_mkdir",
    // perf events on a whole CPU, which watch processes outside the agent's subtree (with
    // CAP_PERFMON refused in `capable`).
    "perf_event_open",
    // The kernel's log cleared, or its console messages switched off (syslog(2)).
    "syslog",
    // Keys: agents use only those made in their own cgroup.
    "key_alloc",
    "key_permission",
];

/// Programs on hooks that came with kernels later than the oldest supported, loaded and attached
/// where the running kernel has the hook: from 6.2 a POSIX ACL, which sets mode bits too, is set
/// and removed through these alone; before, through `inode_setxattr` and `inode_removexattr`.
pub const LATER_PROGRAMS: [&str; 2] = ["inode_set_acl", "inode_remove_acl"];

/// Indices into the settings array.
#[repr(u32)]
#[derive(Clone, Copy, Debug)]
pub enum Setting {
    /// 1: agents may exec only allowlisted binaries; anything else needs approval.
    ExecAllowlist = 0,
    /// The inode number of the daemon's mount namespace: agents change no mount in it.
    HostMountNs = 1,
    /// The inode number of init's mount namespace, when the daemon runs in another one.
    InitMountNs = 2,
    /// The inode number of the host's network namespace (0: unknown, so no namespace is the
    /// agent's own): agents may write only the sysctls of their own, other, network namespace.
    HostNetns = 3,
    /// The device of init's root directory (kernel encoding): with the inode below, the root an
    /// agent must have for a grant to let its exec through (0: unknown, no exec is let through).
    HostRootDevice = 4,
    /// The low 32 bits of the inode number of init's root directory.
    HostRootInodeLow = 5,
    /// The high 32 bits of that inode number.
    HostRootInodeHigh = 6,
}

pub const SETTING_SLOTS: u32 = 7;
pub const MAX_DAEMON_PIDS: u32 = 16;
pub const MAX_ALLOWED: u32 = 4096;
pub const MAX_DAEMON_FILES: u32 = 1024;
pub const MAX_GUARDED_NAMES: u32 = 64;
pub const MAX_RAW_DEVICES: u32 = 1024;
/// Keys agents may have at once (their own: host keys are not counted).
pub const MAX_AGENT_KEYS: u32 = 16384;

/// Values of [`maps::RAW_DEVICES`]. A device listed by neither its number nor its major (for
/// misc devices, major 10, by its number alone) was not registered when the daemon last looked:
/// a driver the host loaded since, refused to agents until the daemon has judged it.
pub mod raw_device {
    /// Agents may not open it.
    pub const REFUSED: u32 = 1;
    /// Registered with the kernel, and not refused.
    pub const REGISTERED: u32 = 2;
    /// The major of misc devices, whose minors tell them apart.
    pub const MISC_MAJOR: u32 = 10;
}

/// The minor that stands for every minor of a major in [`maps::RAW_DEVICES`] (the kernel's
/// `MINORMASK`).
pub const ALL_MINORS: u32 = (1 << 20) - 1;

/// A character device's key in [`maps::RAW_DEVICES`]: its number as the kernel's inodes hold it
/// (`major << 20 | minor`), with [`ALL_MINORS`] for a whole major.
pub const fn raw_device_key(major: u32, minor: u32) -> u32 {
    major << 20 | (minor & ALL_MINORS)
}
/// Room for a name in a [`NameKey`], its closing NUL included.
pub const GUARDED_NAME_BYTES: usize = 32;
pub const MAX_PROTECTED_FILES: u32 = 4096;
/// How many directory levels above a file the kernel looks for a protected directory. A file
/// deeper than that on a device holding a directory rule is refused to agents, not guessed.
pub const MAX_TREE_DEPTH: u32 = 64;

/// Bits of a [`maps::PROTECTED_FILES`] entry: the accesses agents need approval for.
pub mod file_rule {
    pub const READ: u32 = super::file_access::READ;
    pub const WRITE: u32 = super::file_access::WRITE;
    /// A directory: the rule covers everything below it.
    pub const TREE: u32 = 4;
    /// The directory holding a rule's file: agents make, remove and move no names in it (a name
    /// of theirs, a symlink or a file they hold open, at the temporary name a trusted writer
    /// then renames over the rule's file would hand them what it writes).
    pub const NAMES: u32 = 8;

    /// The key that marks a device holding a directory rule: (device, inode 0). Inode 0 names
    /// no file.
    pub const fn device_marker(dev: u32) -> crate::Target {
        crate::Target::exec(dev, 0)
    }
}

/// Bits of a [`maps::DAEMON_FILES`] entry: what agents may not do to it.
pub mod daemon_file {
    /// Neither opened (read or written) nor changed: config, journal, keys.
    pub const SECRET: u32 = 1;
    /// Executed, never opened otherwise nor changed: the daemon's binary, which is also the CLI
    /// agents run.
    pub const BINARY: u32 = 2;
    /// A directory above one of them: not renamed or unlinked, so the path keeps naming it.
    pub const ANCESTOR: u32 = 4;
    /// The reviewers' socket: connected to only from outside the agent cgroups, so whoever
    /// is on a connection there is no agent, whatever its pid names later.
    pub const REVIEWER_SOCKET: u32 = 8;
    /// The agents' socket (and systemd's notify socket): connected to by anyone, never renamed
    /// or unlinked by agents.
    pub const AGENT_SOCKET: u32 = 16;
    /// The daemon's own directory (its sockets'): agents make no name in it, so none can stand
    /// in for a socket while the daemon is away.
    pub const DIRECTORY: u32 = 32;
    /// A name host programs trust outside the guarded directories (`/dev/log`, `/var/run` and
    /// other links on the way to host services): not renamed or unlinked by agents.
    pub const KEPT_NAME: u32 = 64;
}

/// How many cgroup levels below the root the kernel walks looking for an agent ancestor.
pub const MAX_CGROUP_DEPTH: i32 = 16;

/// Capacity of the maps the daemon fills.
pub const MAX_AGENT_CGROUPS: u32 = 256;
pub const MAX_PROTECTED: u32 = 4096;
pub const MAX_GRANTS: u32 = 4096;
pub const MAX_PROTECTED_NETS: u32 = 4096;
/// Four times the agents' socket's backlog (4096): notes are taken as connections are accepted,
/// so no flood of connections can push out a note still waiting.
pub const MAX_AGENT_CONNECTIONS: u32 = 16384;
pub const RING_BUFFER_BYTES: u32 = 256 * 1024;

pub const TARGET_KIND_EXEC: u32 = 1;
pub const TARGET_KIND_CONNECT: u32 = 2;
/// A tamper attempt: `aux` is the [`TamperHook`], `data` hook-specific detail.
pub const TARGET_KIND_TAMPER: u32 = 3;
/// An open of a protected file other than to execute it (a protected binary read, or a file of
/// `[[protect.file]]`): `aux` the [`file_access`] bits it needs approval for, `data` (device,
/// inode) as for exec.
pub const TARGET_KIND_FILE: u32 = 4;
/// A unix socket bound at a protected path: `data` is (device, inode) of the bound file.
pub const TARGET_KIND_UNIX: u32 = 5;

/// Bits of a file target's `aux`: the access an open asks for.
pub mod file_access {
    pub const READ: u32 = 1;
    pub const WRITE: u32 = 2;
}

/// What an agent tried against the enforcer. Denied outright: there is nothing to approve.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TamperHook {
    /// The bpf() syscall (data: command).
    Bpf = 1,
    /// A signal to the daemon (data: tgid, signal).
    Signal = 2,
    /// ptrace or process_vm_* on the daemon (data: tgid, mode).
    Ptrace = 3,
    /// Unlinking something on bpffs.
    PinUnlink = 4,
    /// Renaming something on or onto bpffs.
    PinRename = 5,
    /// Unmounting (data: filesystem magic, [`MountRefusal`]).
    Umount = 6,
    /// Reconfiguring a superblock: mount -o remount, fspick (data: filesystem magic,
    /// [`MountRefusal`]).
    Remount = 7,
    /// Writing on cgroupfs: moving processes, making or changing cgroups.
    CgroupWrite = 8,
    /// Loading kernel modules or other files into the kernel (data: read id).
    KernelRead = 9,
    /// Loading kernel modules or other blobs into the kernel (data: load id).
    KernelLoad = 10,
    /// Mapping a protected binary executable outside exec (the dynamic loader trick).
    ExecMapping = 11,
    /// Executing a file that lives on no mounted filesystem (a memfd).
    ExecInternal = 12,
    /// Writing, truncating, renaming, unlinking or linking a protected or allowlisted file
    /// (data: device, inode).
    ProtectedChange = 13,
    /// Opening, or changing, a file the daemon relies on (data: device, inode).
    DaemonFile = 14,
    /// Opening anything on bpffs, where the pins live (data: open flags).
    PinOpen = 15,
    /// Opening a protected file through a stacking filesystem (overlayfs), whose own inode
    /// would not match (data: device, inode of the file below).
    StackedOpen = 16,
    /// Opening a block device: its raw blocks hold every file, protected or the daemon's
    /// (data: device number).
    BlockDevice = 17,
    /// Creating a socket agents may not have: raw, packet, transports other than TCP and UDP,
    /// families that reach the network by other routes (data: family, type << 32 | protocol).
    SocketCreate = 18,
    /// mount(2): a new mount, bind, move or propagation change (data: flags, [`MountRefusal`]).
    Mount = 19,
    /// Making a cgroup v1, bpffs or network file system superblock, by mount(2) or fsconfig
    /// (data: magic, or for mount(2) of a network file system the first eight bytes of the type's
    /// name as a little-endian word, [`MountRefusal`]).
    MountFs = 20,
    /// move_mount(2): attaching an fsmount or open_tree mount, or moving one (data: 0,
    /// [`MountRefusal`]).
    MoveMount = 21,
    /// pivot_root(2) in the host's mount namespace.
    PivotRoot = 22,
    /// ptrace, process_vm_*, pidfd_getfd, /proc/PID/mem and the like on a process outside the
    /// agent's subtree (data: tgid, ptrace mode).
    PtraceOutside = 23,
    /// PTRACE_TRACEME with a parent outside the agent's subtree (data: the parent's tgid).
    TraceMe = 24,
    /// Changing the daemon's resource limits (data: tgid, resource).
    DaemonRlimit = 25,
    /// Changing the daemon's scheduling policy, parameters or CPU affinity (data: tgid).
    DaemonScheduler = 26,
    /// Changing the daemon's nice value (data: tgid, nice).
    DaemonNice = 27,
    /// Changing the daemon's I/O priority (data: tgid, ioprio).
    DaemonIoprio = 28,
    /// Moving the daemon's memory between NUMA nodes (data: tgid).
    DaemonMemory = 29,
    /// Writing a /proc/PID file of a process outside the agent's subtree, such as the
    /// daemon's oom_score_adj (data: tgid, mask).
    ProcWrite = 30,
    /// Writing a host-wide /proc file: a sysctl not private to the agent's own network
    /// namespace, sysrq-trigger (data: inode number).
    SysctlWrite = 31,
    /// Writing sysfs or another file system of kernel knobs (debugfs, tracefs, securityfs,
    /// configfs, efivarfs, binfmt_misc, pstore, fusectl, selinuxfs) (data: magic, inode number).
    KernelFsWrite = 32,
    /// Asking the kernel to load a module (data: the first 16 bytes of its name).
    ModuleRequest = 33,
    /// Tracing or reading the memory of a process running a protected binary, even the
    /// agent's own (data: tgid, ptrace mode).
    ProtectedProcess = 34,
    /// Executing a protected binary while traced or watched by perf events (data: device,
    /// inode).
    TracedExec = 35,
    /// A process running a protected binary dumping core: the dump holds its code
    /// (data: device, inode of the core file).
    ProtectedCore = 36,
    /// Opening kernel memory: /proc/kcore, /dev/mem, /dev/kmem, /dev/port, a block device (data:
    /// device, inode); or raw access to the hardware, CAP_SYS_RAWIO (`ioperm`, `iopl`,
    /// `/dev/cpu/*/msr`; data: capability).
    KernelMemory = 37,
    /// Administering the host's network (CAP_NET_ADMIN in the initial user namespace): routes,
    /// addresses, links, firewall and NAT rules, traffic control, tunnels (data: capability).
    NetAdmin = 38,
    /// mount_setattr(2) in the host's mount namespace: a mount's flags or propagation
    /// (data: 0, [`MountRefusal`]).
    MountSetattr = 39,
    /// Opening or changing a file on a device that holds a protected directory, when where the
    /// file sits cannot be told (a handle opened out of its directory, a path deeper than the
    /// kernel looks) (data: device, inode).
    UnplacedFile = 40,
    /// An exec let through on a grant for certain arguments that reached the new program with
    /// others (a thread rewrote them during the exec): the process is killed before it runs
    /// (data: device, inode).
    ArgvChanged = 41,
    /// Connecting to the daemon's HTTP listener, where reviewers' decisions arrive
    /// (data: port, 0).
    DaemonListener = 42,
    /// Connecting to the reviewers' socket, where decisions are taken (data: device, inode).
    ReviewerSocket = 43,
    /// An exec that needs a grant, by a caller that does not see the host's files: in a mount
    /// namespace of its own or under another root (chroot), where the loader, the libraries or a
    /// script's interpreter the exec would load may be the agent's (data: device, inode).
    ForeignRootExec = 44,
    /// An exec that needs a grant, by a caller under a seccomp filter whose system calls a
    /// listener answers (user notification): the listener could answer the loader's opens with
    /// files of its own (data: device, inode).
    ListenedExec = 45,
    /// An exec on a grant whose environment holds a variable outside [`APPROVED_ENV`]: refused
    /// before the grant is used, or killed before its first instruction when the variable
    /// appeared after that check (data: device, inode).
    UnapprovedEnv = 46,
    /// A connect or send to the unspecified address (`0.0.0.0`, `::`), which the kernel
    /// delivers to a local address, a protected listener's included (data: port, protocol).
    UnspecifiedDestination = 47,
    /// Input pushed into a terminal (TIOCSTI, TIOCLINUX): whoever reads that terminal outside
    /// the agent cgroups would run it (data: ioctl command, 0).
    TerminalInput = 48,
    /// Opening for writing a file on a file system mounted in the host's mount namespace below a
    /// directory whose rule protects writing (a host path), before the daemon guarded that mount
    /// (data: device, inode).
    UnguardedMount = 49,
    /// A signal the kernel sends a file's owner when its I/O is ready (SIGIO, SIGURG, or the
    /// one `F_SETSIG` chose), aimed at the daemon: it passes no `task_kill` (data: tgid,
    /// signal, 0 for SIGIO).
    FileSignal = 50,
    /// A notification mark with permission events (fanotify's open, access or exec ones), whose
    /// listener holds other processes' opens and reads, the daemon's too, until it answers
    /// (data: event mask, object kind: inode 0, mount 1, file system 2).
    NotifyPermission = 51,
    /// A file lease: whoever opens the file then waits until the holder gives it up, up to the
    /// kernel's `lease-break-time` (data: lease kind, 0).
    Lease = 52,
    /// Scheduling priority above the ordinary (a realtime or deadline policy, a nice value below
    /// 0, the realtime I/O class): an agent's process spinning there would leave the daemon a
    /// sliver of each CPU, or of the disk (data: CAP_SYS_NICE and 0; a resource limit raised
    /// and its new value; a limit the process was given above the ordinary and its value, for
    /// a change of policy or a nice value below 0 within it; or 0 and the I/O priority).
    Priority = 53,
    /// A file opened by handle (`open_by_handle_at`): a handle reaches a file through any mount
    /// of its file system, so the mount it is opened through says nothing of where it lies
    /// (data: device, inode).
    OpenByHandle = 54,
    /// Binding a port below 1024 in the host's network (CAP_NET_BIND_SERVICE in the initial user
    /// namespace): the ports host services listen on, such as DNS's, where an agent's server
    /// would answer host programs and the daemon in their place (data: capability).
    HostPort = 55,
    /// Making a name the host relies on where it is missing: `/dev/log` while a syslog daemon
    /// restarts, the directory of a host service not there yet (data: device, inode of the
    /// directory); or moving, removing, writing or changing what is at or below one (data:
    /// device, inode of the file, or for a move or removal, of its directory).
    GuardedName = 56,
    /// Setting the system clock (CAP_SYS_TIME: `clock_settime`, `settimeofday`, `adjtimex` with
    /// changes, a real-time clock's time): the journal's times, pending requests' expiry,
    /// signed requests' freshness, certificates' validity and the host's schedules all read it
    /// (data: capability).
    Clock = 57,
    /// Opening a character device that fronts storage, memory, firmware, input or device DMA
    /// past the file systems: SCSI generic and bsg (SG_IO reads and writes sectors), NVMe,
    /// device-mapper's control, input devices and uinput, USB devices, vfio, the TPM
    /// (data: device, inode; [`RAW_DEVICES`](crate::maps::RAW_DEVICES) lists them).
    RawDevice = 58,
    /// Rebooting, halting or powering off the host, or loading a kernel to boot into
    /// (CAP_SYS_BOOT: `reboot`, `kexec_load`): every process stops, the daemon's too; or
    /// setting a timer that wakes it from suspend (CAP_WAKE_ALARM) (data: capability).
    Reboot = 59,
    /// Watching processes outside the agent's subtree through perf: an event on a whole CPU
    /// (or a cgroup's tasks on it), which samples whatever runs there, or CAP_PERFMON, which
    /// lets an event on another process past the ptrace check (data: the perf check or the
    /// capability).
    Perf = 60,
    /// Reconfiguring a host console, keyboard, serial port or real-time clock through an ioctl
    /// the kernel guards with no capability agents lack: a console keymap or key string (a key
    /// the operator presses types the agent's text), the keyboard's mode, the console shown or
    /// its font, where console messages go, a serial port's I/O address (raw port access, or a
    /// crash), a clock's alarm or parameters; or a whole file system frozen, thawed, shut down
    /// or relabelled (data: ioctl command, 0).
    DeviceControl = 61,
    /// Clearing the kernel's log, turning its messages on the consoles off or on, setting
    /// their level, or reading /proc/kmsg's stream away from the host's log readers (data: the
    /// syslog(2) action, 0), or opening /dev/kmsg to write lines into the log that read as the
    /// kernel's (data: device, inode).
    KernelLog = 62,
    /// Any use of a key an agent did not make (read, write, link, set attributes): the
    /// keyrings of its user (root's for a root agent) hold host services' secrets
    /// (data: the permission asked, 0).
    HostKey = 63,
    /// Writing into the host's audit trail (which also reaches the kernel's log), changing
    /// its rules or switching it off, or reading it as it is written (data: capability, 0).
    Audit = 64,
    /// Loading or unloading one of the kernel's modules (CAP_SYS_MODULE, which `init_module`,
    /// `finit_module` and `delete_module` ask first): code of the agent's in the kernel, or a
    /// filter, driver or file system the host loaded gone once nothing uses it (data:
    /// capability, 0). The module's read or load is refused too ([`TamperHook::KernelRead`],
    /// [`TamperHook::KernelLoad`]).
    KernelModule = 65,
}

/// Why a mount operation was refused: the second detail word of the mount tamper hooks.
#[repr(u64)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MountRefusal {
    /// The caller is in the host's (the daemon's or init's) mount namespace.
    HostNamespace = 1,
    /// The mount point is shared: the change would propagate to its peers, which may be the
    /// host's.
    Shared = 2,
    /// The superblock is also mounted in the host's namespace.
    HostSuperblock = 3,
    /// The mount tree was too large or could not be read: refused rather than guessed.
    Unchecked = 4,
    /// A filesystem agents may never mount or reconfigure (bpffs, cgroup v1, network file
    /// systems).
    Filesystem = 5,
    /// A name something is mounted on in another namespace (the host's): renaming or removing
    /// it, which the kernel allows where nothing is mounted on it, would move or take away that
    /// mount.
    MountPoint = 6,
    /// A directory above a mount point of the host's namespace: renaming it would move those
    /// mounts.
    AboveMountPoint = 7,
    /// Any directory, while the daemon has not looked at the directories above the host's
    /// mount points since a mount was made (or such a directory renamed), or could not: which
    /// they are is not known.
    MountsNotLooked = 8,
}

impl TamperHook {
    /// Every hook, in id order (ids start at 1).
    pub const ALL: [Self; 65] = {
        use TamperHook::*;
        [
            Bpf,
            Signal,
            Ptrace,
            PinUnlink,
            PinRename,
            Umount,
            Remount,
            CgroupWrite,
            KernelRead,
            KernelLoad,
            ExecMapping,
            ExecInternal,
            ProtectedChange,
            DaemonFile,
            PinOpen,
            StackedOpen,
            BlockDevice,
            SocketCreate,
            Mount,
            MountFs,
            MoveMount,
            PivotRoot,
            PtraceOutside,
            TraceMe,
            DaemonRlimit,
            DaemonScheduler,
            DaemonNice,
            DaemonIoprio,
            DaemonMemory,
            ProcWrite,
            SysctlWrite,
            KernelFsWrite,
            ModuleRequest,
            ProtectedProcess,
            TracedExec,
            ProtectedCore,
            KernelMemory,
            NetAdmin,
            MountSetattr,
            UnplacedFile,
            ArgvChanged,
            DaemonListener,
            ReviewerSocket,
            ForeignRootExec,
            ListenedExec,
            UnapprovedEnv,
            UnspecifiedDestination,
            TerminalInput,
            UnguardedMount,
            FileSignal,
            NotifyPermission,
            Lease,
            Priority,
            OpenByHandle,
            HostPort,
            GuardedName,
            Clock,
            RawDevice,
            Reboot,
            Perf,
            DeviceControl,
            KernelLog,
            HostKey,
            Audit,
            KernelModule,
        ]
    };

    pub fn from_raw(raw: u32) -> Option<Self> {
        Self::ALL.into_iter().find(|hook| *hook as u32 == raw)
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Bpf => "bpf",
            Self::Signal => "signal",
            Self::Ptrace => "ptrace",
            Self::PinUnlink => "pin_unlink",
            Self::PinRename => "pin_rename",
            Self::Umount => "umount",
            Self::Remount => "remount",
            Self::CgroupWrite => "cgroup_write",
            Self::KernelRead => "kernel_read_file",
            Self::KernelLoad => "kernel_load_data",
            Self::ExecMapping => "exec_mapping",
            Self::ExecInternal => "exec_internal",
            Self::ProtectedChange => "protected_change",
            Self::DaemonFile => "daemon_file",
            Self::PinOpen => "pin_open",
            Self::StackedOpen => "stacked_open",
            Self::BlockDevice => "block_device",
            Self::SocketCreate => "socket_create",
            Self::Mount => "mount",
            Self::MountFs => "mount_fs",
            Self::MoveMount => "move_mount",
            Self::PivotRoot => "pivot_root",
            Self::PtraceOutside => "ptrace_outside",
            Self::TraceMe => "ptrace_traceme",
            Self::DaemonRlimit => "daemon_rlimit",
            Self::DaemonScheduler => "daemon_scheduler",
            Self::DaemonNice => "daemon_nice",
            Self::DaemonIoprio => "daemon_ioprio",
            Self::DaemonMemory => "daemon_move_memory",
            Self::ProcWrite => "proc_write",
            Self::SysctlWrite => "sysctl_write",
            Self::KernelFsWrite => "kernel_fs_write",
            Self::ModuleRequest => "module_request",
            Self::ProtectedProcess => "protected_process",
            Self::TracedExec => "traced_exec",
            Self::ProtectedCore => "protected_core",
            Self::KernelMemory => "kernel_memory",
            Self::NetAdmin => "net_admin",
            Self::MountSetattr => "mount_setattr",
            Self::UnplacedFile => "unplaced_file",
            Self::ArgvChanged => "argv_changed",
            Self::DaemonListener => "daemon_listener",
            Self::ReviewerSocket => "reviewer_socket",
            Self::ForeignRootExec => "foreign_root_exec",
            Self::ListenedExec => "listened_exec",
            Self::UnapprovedEnv => "unapproved_env",
            Self::UnspecifiedDestination => "unspecified_destination",
            Self::TerminalInput => "terminal_input",
            Self::UnguardedMount => "unguarded_mount",
            Self::FileSignal => "file_signal",
            Self::NotifyPermission => "notify_permission",
            Self::Lease => "lease",
            Self::Priority => "priority",
            Self::OpenByHandle => "open_by_handle",
            Self::HostPort => "host_port",
            Self::GuardedName => "guarded_name",
            Self::Clock => "clock",
            Self::RawDevice => "raw_device",
            Self::Reboot => "reboot",
            Self::Perf => "perf",
            Self::DeviceControl => "device_control",
            Self::KernelLog => "kernel_log",
            Self::HostKey => "host_key",
            Self::Audit => "audit",
            Self::KernelModule => "kernel_module",
        }
    }
}

/// IP protocol numbers as the kernel reports them in `sock.sk_protocol`.
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// Bits of [`PortRange::protocols`].
pub const PROTOCOL_TCP: u32 = 1;
pub const PROTOCOL_UDP: u32 = 2;
/// With [`PROTOCOL_TCP`]: the daemon's own HTTP listener, which agents never reach (no request:
/// there is nothing to approve).
pub const PROTOCOL_DAEMON: u32 = 4;

/// Port ranges one protected prefix covers, already merged with those of every shorter prefix
/// containing it (the trie returns only the longest match).
pub const MAX_PORT_RANGES: usize = 16;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
    pub protocols: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortRanges {
    pub count: u32,
    pub ranges: [PortRange; MAX_PORT_RANGES],
}

impl PortRanges {
    /// Whether `port` over `protocol` (a PROTOCOL_* bit) is covered.
    #[inline(always)]
    pub fn covers(&self, port: u16, protocol: u32) -> bool {
        let mut index = 0;
        while index < MAX_PORT_RANGES {
            if index as u32 >= self.count {
                return false;
            }
            let range = &self.ranges[index];
            if range.protocols & protocol != 0 && range.first <= port && port <= range.last {
                return true;
            }
            index += 1;
        }
        false
    }
}

/// A name in a directory that agents may not make, whether or not it is there now: made by an
/// agent, host programs would meet the agent's socket, link or directory at a path they trust.
/// Names longer than [`GUARDED_NAME_BYTES`] less one are cut there, on both sides alike (so a
/// longer name that begins the same is refused too).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NameKey {
    /// The directory (exec form: device, inode).
    pub dir: Target,
    /// The name's bytes, NUL-padded.
    pub name: [u8; GUARDED_NAME_BYTES],
}

impl NameKey {
    pub fn new(dir: Target, name: &[u8]) -> Self {
        let mut key = Self {
            dir,
            name: [0; GUARDED_NAME_BYTES],
        };
        let len = name.len().min(GUARDED_NAME_BYTES - 1);
        key.name[..len].copy_from_slice(&name[..len]);
        key
    }
}

/// What an action touches. For exec, `data` is (device, inode) of the executed file, the device
/// in the kernel's own `dev_t` encoding (major << 20 | minor).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(serde::Serialize, serde::Deserialize))]
pub struct Target {
    pub kind: u32,
    /// Kind-specific extra data; zero for exec.
    pub aux: u32,
    pub data: [u64; 2],
}

impl Target {
    pub const fn exec(dev: u32, ino: u64) -> Self {
        Self {
            kind: TARGET_KIND_EXEC,
            aux: 0,
            data: [dev as u64, ino],
        }
    }

    /// A unix socket by the (device, inode) of the file it is bound to.
    pub const fn unix_socket(dev: u32, ino: u64) -> Self {
        Self {
            kind: TARGET_KIND_UNIX,
            aux: 0,
            data: [dev as u64, ino],
        }
    }

    /// A network destination: `address` in IPv6 form (IPv4 as `::ffff:a.b.c.d`), `port` in host
    /// order, `protocol` an IPPROTO_* number.
    #[inline(always)]
    pub fn connect(address: [u8; 16], port: u16, protocol: u8) -> Self {
        let mut high = [0u8; 8];
        let mut low = [0u8; 8];
        high.copy_from_slice(&address[..8]);
        low.copy_from_slice(&address[8..]);
        Self {
            kind: TARGET_KIND_CONNECT,
            aux: port as u32 | (protocol as u32) << 16,
            data: [u64::from_ne_bytes(high), u64::from_ne_bytes(low)],
        }
    }

    /// An open of the file (device, inode) asking for `access` ([`file_access`] bits).
    pub const fn file(dev: u32, ino: u64, access: u32) -> Self {
        Self {
            kind: TARGET_KIND_FILE,
            aux: access,
            data: [dev as u64, ino],
        }
    }

    /// The same file as an exec target: how protected and allowlisted files are keyed.
    pub const fn as_exec(&self) -> Self {
        Self::exec(self.data[0] as u32, self.data[1])
    }

    /// For a network target: (address, port, protocol).
    pub fn destination(&self) -> ([u8; 16], u16, u8) {
        let mut address = [0u8; 16];
        address[..8].copy_from_slice(&self.data[0].to_ne_bytes());
        address[8..].copy_from_slice(&self.data[1].to_ne_bytes());
        (address, self.aux as u16, (self.aux >> 16) as u8)
    }
}

/// Key of a grant: the exact cgroup of the process that asked, and what it asked for.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct GrantKey {
    pub cgroup_id: u64,
    pub target: Target,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GrantValue {
    /// CLOCK_BOOTTIME nanoseconds after which the grant never allows.
    pub expires_boot_ns: u64,
    pub grant_id: u64,
}

/// Set in the id of a grant that lets through only the exec arguments it was approved for (their
/// hash is in [`maps::ARGV_GRANTS`]); a grant without it covers any arguments. An id bit rather
/// than a map entry, so that a binding entry missing for any reason denies.
pub const GRANT_BINDS_ARGV: u64 = 1 << 63;

/// Bytes of an exec's arguments read, shown to reviewers and bound by grants.
pub const ARGV_BYTES: usize = 4096;
/// Arguments read at most.
pub const MAX_ARGS: u32 = 64;

/// Bits of [`ExecArgs::flags`].
pub mod argv_flags {
    /// More than [`crate::ARGV_BYTES`] bytes or [`crate::MAX_ARGS`] arguments: what is shown is
    /// cut, and no argument-bound grant matches.
    pub const TRUNCATED: u32 = 1;
    /// The arguments could not be read (an unknown system call, memory that faults).
    pub const UNREAD: u32 = 2;
    /// An exec of a script: `argv[0]` is left out, since the kernel gives the script's
    /// interpreter its own (the interpreter's path, then the script's).
    pub const WITHOUT_ARGV0: u32 = 4;
    /// The binary is reached as the interpreter of another file (a `#!` line naming it): what
    /// it gets is that file's line and path, not what the caller passed. No argument-bound
    /// grant matches.
    pub const INTERPRETER: u32 = 8;
    /// The kernel copied another number of arguments than the caller's memory holds now: it
    /// changed after the copy. No argument-bound grant matches.
    pub const CHANGED: u32 = 16;
}

/// What the kernel read of an exec's arguments: `count` NUL-terminated strings in the first
/// `len` bytes of [`ExecEvent::argv`], and their [`ArgvHasher`] hash.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExecArgs {
    pub hash: u64,
    pub len: u32,
    pub count: u32,
    pub flags: u32,
    pub _reserved: u32,
}

impl ExecArgs {
    /// Whether a grant bound to arguments can match these: read whole.
    pub const fn bindable(&self) -> bool {
        use argv_flags::{CHANGED, INTERPRETER, TRUNCATED, UNREAD};
        self.flags & (TRUNCATED | UNREAD | INTERPRETER | CHANGED) == 0
    }
}

/// The record of an exec's denial: the event, then the arguments the caller passed.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ExecEvent {
    pub event: Event,
    pub args: ExecArgs,
    pub argv: [u8; ARGV_BYTES],
}

/// The environment variables a program let through on a grant may be given. Interpreters run
/// code named in their environment (`BASH_ENV`, exported shell functions, `PYTHONPATH`,
/// `PERL5OPT`, `NODE_OPTIONS`, ...), and many programs run commands it names (`GIT_SSH_COMMAND`,
/// `PAGER`): the agent's would run inside what the reviewer approved. The dynamic loader's
/// variables are removed by secure-execution mode already; the values of these are used only
/// where secure-execution mode or the program restricts them.
pub const APPROVED_ENV: &[&str] = &[
    "PATH",
    "HOME",
    "PWD",
    "OLDPWD",
    "USER",
    "LOGNAME",
    "HOSTNAME",
    "SHLVL",
    "_",
    "TERM",
    "COLUMNS",
    "LINES",
    "NO_COLOR",
    "TZ",
    "LANG",
    "LC_ALL",
    "LC_ADDRESS",
    "LC_COLLATE",
    "LC_CTYPE",
    "LC_IDENTIFICATION",
    "LC_MEASUREMENT",
    "LC_MESSAGES",
    "LC_MONETARY",
    "LC_NAME",
    "LC_NUMERIC",
    "LC_PAPER",
    "LC_TELEPHONE",
    "LC_TIME",
];

/// Bytes of a variable's name the kernel compares: longer names are never approved.
pub const ENV_NAME_BYTES: usize = 32;

/// An environment variable's name as the kernel looks it up: its bytes, zero-padded, as
/// little-endian words.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct EnvName(pub [u64; ENV_NAME_BYTES / 8]);

impl EnvName {
    /// The key of `name`; None for a name the kernel cannot approve (empty, too long, or with
    /// `=` or NUL in it).
    pub fn new(name: &str) -> Option<Self> {
        let bytes = name.as_bytes();
        if bytes.is_empty()
            || bytes.len() > ENV_NAME_BYTES
            || bytes.contains(&b'=')
            || bytes.contains(&0)
        {
            return None;
        }
        let mut padded = [0u8; ENV_NAME_BYTES];
        padded[..bytes.len()].copy_from_slice(bytes);
        let mut words = [0u64; ENV_NAME_BYTES / 8];
        for (word, chunk) in words.iter_mut().zip(padded.chunks_exact(8)) {
            let mut eight = [0u8; 8];
            eight.copy_from_slice(chunk);
            *word = u64::from_le_bytes(eight);
        }
        Some(Self(words))
    }

    /// The name in the `NAME=value` string whose first bytes are `text` (read as little-endian
    /// words, zero after the string's end), as the kernel finds it without a loop over bytes.
    /// None when no `=` ends a name of at most [`ENV_NAME_BYTES`] bytes.
    #[inline(always)]
    pub fn of_entry(text: &[u64; ENV_NAME_BYTES / 8 + 1]) -> Option<Self> {
        const EQUALS: u64 = 0x3d3d_3d3d_3d3d_3d3d;
        const ONES: u64 = 0x0101_0101_0101_0101;
        const HIGHS: u64 = 0x8080_8080_8080_8080;
        let mut name = [0u64; ENV_NAME_BYTES / 8];
        for (index, word) in text.iter().enumerate() {
            // A byte of `word` is '=' where `equal` is zero; the lowest flagged byte is exact.
            let equal = word ^ EQUALS;
            let flagged = equal.wrapping_sub(ONES) & !equal & HIGHS;
            if flagged != 0 {
                // The bytes before the first '=': all bits below the flagged byte.
                let before = ((flagged & flagged.wrapping_neg()) >> 7) - 1;
                if index < name.len() {
                    name[index] = word & before;
                    return Some(Self(name));
                }
                // Past the name's room, '=' may only be the first byte.
                return (before == 0).then_some(Self(name));
            }
            if index < name.len() {
                name[index] = *word;
            }
        }
        None
    }
}

/// The secret key of [`ArgvHasher`]: random, made by the daemon, never leaves the kernel maps.
pub type ArgvKey = [u64; 2];

/// SipHash-2-4 (Aumasson and Bernstein, 2012), keyed with [`ArgvKey`]: binds a grant to the
/// arguments a reviewer saw. A keyed hash, so that an agent, which cannot read the key, cannot
/// make two argument lists that collide. Fed one little-endian word at a time, so that kernel
/// programs can loop over a bounded buffer.
#[derive(Clone, Copy)]
pub struct ArgvHasher {
    v: [u64; 4],
}

impl ArgvHasher {
    #[inline(always)]
    pub const fn new(key: ArgvKey) -> Self {
        Self {
            v: [
                key[0] ^ 0x736f_6d65_7073_6575,
                key[1] ^ 0x646f_7261_6e64_6f6d,
                key[0] ^ 0x6c79_6765_6e65_7261,
                key[1] ^ 0x7465_6462_7974_6573,
            ],
        }
    }

    #[inline(always)]
    fn round(&mut self) {
        let [v0, v1, v2, v3] = &mut self.v;
        *v0 = v0.wrapping_add(*v1);
        *v1 = v1.rotate_left(13) ^ *v0;
        *v0 = v0.rotate_left(32);
        *v2 = v2.wrapping_add(*v3);
        *v3 = v3.rotate_left(16) ^ *v2;
        *v0 = v0.wrapping_add(*v3);
        *v3 = v3.rotate_left(21) ^ *v0;
        *v2 = v2.wrapping_add(*v1);
        *v1 = v1.rotate_left(17) ^ *v2;
        *v2 = v2.rotate_left(32);
    }

    /// The next eight bytes of the message.
    #[inline(always)]
    pub fn word(&mut self, word: u64) {
        self.v[3] ^= word;
        self.round();
        self.round();
        self.v[0] ^= word;
    }

    /// The hash of a message of `len` bytes whose last `len % 8` bytes are `tail` (the rest of
    /// the word zero).
    #[inline(always)]
    pub fn finish(mut self, len: usize, tail: u64) -> u64 {
        self.word((len as u64) << 56 | tail);
        self.v[2] ^= 0xff;
        self.round();
        self.round();
        self.round();
        self.round();
        self.v[0] ^ self.v[1] ^ self.v[2] ^ self.v[3]
    }

    /// The hash of `bytes` in one call.
    pub fn hash(key: ArgvKey, bytes: &[u8]) -> u64 {
        let mut hasher = Self::new(key);
        let mut words = bytes.chunks_exact(8);
        for word in &mut words {
            let mut le = [0u8; 8];
            le.copy_from_slice(word);
            hasher.word(u64::from_le_bytes(le));
        }
        let mut tail = [0u8; 8];
        tail[..words.remainder().len()].copy_from_slice(words.remainder());
        hasher.finish(bytes.len(), u64::from_le_bytes(tail))
    }
}

#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// An agent's action was denied and waits for approval.
    Denied = 1,
    /// A grant was consumed: this one action passed.
    GrantUsed = 2,
    /// An agent tried to disable or walk around the enforcer; denied.
    Tamper = 3,
}

impl EventKind {
    pub fn from_raw(raw: u32) -> Option<Self> {
        match raw {
            1 => Some(Self::Denied),
            2 => Some(Self::GrantUsed),
            3 => Some(Self::Tamper),
            _ => None,
        }
    }
}

pub const COMM_LEN: usize = 16;
pub const FILENAME_LEN: usize = 256;

/// One record in the ring buffer.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Event {
    pub kind: u32,
    pub pid: u32,
    pub tgid: u32,
    pub uid: u32,
    /// The cgroup the process is in (the grant key's cgroup).
    pub cgroup_id: u64,
    /// The configured agent cgroup it descends from.
    pub agent_cgroup_id: u64,
    pub target: Target,
    /// Set on [`EventKind::GrantUsed`].
    pub grant_id: u64,
    pub comm: [u8; COMM_LEN],
    pub filename: [u8; FILENAME_LEN],
}

/// Indices into the per-CPU counter map.
#[repr(u32)]
#[derive(Clone, Copy, Debug)]
pub enum Counter {
    /// Events that did not fit into the ring buffer (the action was still denied).
    EventsDropped = 0,
    /// Protected actions denied.
    Denied = 1,
    /// Grants consumed.
    GrantsUsed = 2,
    /// Tamper attempts denied.
    Tamper = 3,
}

pub const COUNTER_SLOTS: u32 = 4;

#[cfg(feature = "user")]
mod user {
    // SAFETY: all are plain-old-data `repr(C)` structs with no implicit padding.
    unsafe impl aya::Pod for super::Target {}
    unsafe impl aya::Pod for super::GrantKey {}
    unsafe impl aya::Pod for super::GrantValue {}
    unsafe impl aya::Pod for super::PortRanges {}
    unsafe impl aya::Pod for super::ExecArgs {}
    unsafe impl aya::Pod for super::EnvName {}
    unsafe impl aya::Pod for super::NameKey {}
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;
    use core::mem::size_of;

    // Any implicit padding would make these sums differ from the sizes.
    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<Target>(), 4 + 4 + 16);
        assert_eq!(size_of::<GrantKey>(), 8 + size_of::<Target>());
        assert_eq!(size_of::<GrantValue>(), 16);
        assert_eq!(
            size_of::<NameKey>(),
            size_of::<Target>() + GUARDED_NAME_BYTES
        );
        assert_eq!(size_of::<PortRange>(), 2 + 2 + 4);
        assert_eq!(
            size_of::<PortRanges>(),
            4 + MAX_PORT_RANGES * size_of::<PortRange>()
        );
        assert_eq!(
            size_of::<Event>(),
            4 * 4 + 8 + 8 + size_of::<Target>() + 8 + COMM_LEN + FILENAME_LEN
        );
    }

    #[test]
    fn exec_records_have_no_implicit_padding() {
        assert_eq!(size_of::<ExecArgs>(), 8 + 4 * 4);
        assert_eq!(
            size_of::<ExecEvent>(),
            size_of::<Event>() + size_of::<ExecArgs>() + ARGV_BYTES
        );
    }

    /// The reference vectors of the SipHash paper (key 00..0f, message 00..len-1), and std's
    /// own SipHash-2-4 for every length up to three words.
    #[test]
    fn argv_hasher_is_siphash_2_4() {
        let key = [
            u64::from_le_bytes([0, 1, 2, 3, 4, 5, 6, 7]),
            u64::from_le_bytes([8, 9, 10, 11, 12, 13, 14, 15]),
        ];
        let message: [u8; 24] = core::array::from_fn(|index| index as u8);
        assert_eq!(ArgvHasher::hash(key, &[]), 0x726f_db47_dd0e_0e31);
        assert_eq!(ArgvHasher::hash(key, &message[..15]), 0xa129_ca61_49be_45e5);
        for len in 0..=message.len() {
            #[allow(deprecated)]
            let mut reference = std::hash::SipHasher::new_with_keys(key[0], key[1]);
            std::hash::Hasher::write(&mut reference, &message[..len]);
            assert_eq!(
                ArgvHasher::hash(key, &message[..len]),
                std::hash::Hasher::finish(&reference),
                "length {len}"
            );
        }
        // The key matters.
        assert_ne!(
            ArgvHasher::hash([1, 2], b"echo\0one\0"),
            ArgvHasher::hash([1, 3], b"echo\0one\0")
        );
    }

    #[test]
    fn offset_globals_are_unique() {
        let members = &offsets::MEMBERS;
        for (index, member) in members.iter().enumerate() {
            assert!(
                members[index + 1..]
                    .iter()
                    .all(|other| other.global != member.global),
                "{} is listed twice",
                member.global
            );
        }
    }

    #[test]
    fn connect_target_round_trips() {
        let mut address = [0u8; 16];
        address[10] = 0xff;
        address[11] = 0xff;
        address[12..].copy_from_slice(&[10, 20, 0, 5]);
        let target = Target::connect(address, 5432, IPPROTO_TCP);
        assert_eq!(target.kind, TARGET_KIND_CONNECT);
        assert_eq!(target.destination(), (address, 5432, IPPROTO_TCP));
    }

    #[test]
    fn port_ranges_cover_by_port_and_protocol() {
        let mut ranges = PortRanges {
            count: 2,
            ..PortRanges::default()
        };
        ranges.ranges[0] = PortRange {
            first: 5432,
            last: 5432,
            protocols: PROTOCOL_TCP,
        };
        ranges.ranges[1] = PortRange {
            first: 8000,
            last: 8100,
            protocols: PROTOCOL_TCP | PROTOCOL_UDP,
        };
        assert!(ranges.covers(5432, PROTOCOL_TCP));
        assert!(!ranges.covers(5432, PROTOCOL_UDP));
        assert!(ranges.covers(8100, PROTOCOL_UDP));
        assert!(!ranges.covers(8101, PROTOCOL_TCP));
        // Entries past `count` are ignored.
        ranges.count = 1;
        assert!(!ranges.covers(8000, PROTOCOL_TCP));
    }

    #[test]
    fn tamper_hooks_round_trip() {
        for (index, hook) in TamperHook::ALL.into_iter().enumerate() {
            let raw = index as u32 + 1;
            assert_eq!(hook as u32, raw, "ids are dense and in order");
            assert_eq!(TamperHook::from_raw(raw), Some(hook));
            assert!(!hook.name().is_empty());
        }
        for (index, hook) in TamperHook::ALL.into_iter().enumerate() {
            let later = &TamperHook::ALL[index + 1..];
            assert!(
                later.iter().all(|other| other.name() != hook.name()),
                "names are distinct"
            );
        }
        assert_eq!(TamperHook::from_raw(0), None);
        assert_eq!(TamperHook::from_raw(TamperHook::ALL.len() as u32 + 1), None);
    }

    #[test]
    fn event_kind_round_trips() {
        for kind in [EventKind::Denied, EventKind::GrantUsed, EventKind::Tamper] {
            assert_eq!(EventKind::from_raw(kind as u32), Some(kind));
        }
        assert_eq!(EventKind::from_raw(0), None);
    }

    /// An entry as the kernel reads it: its first 40 bytes, zero after the string.
    fn entry_words(entry: &str) -> [u64; ENV_NAME_BYTES / 8 + 1] {
        let mut bytes = [0u8; ENV_NAME_BYTES + 8];
        let take = entry.len().min(bytes.len() - 1);
        bytes[..take].copy_from_slice(&entry.as_bytes()[..take]);
        let mut words = [0u64; ENV_NAME_BYTES / 8 + 1];
        for (word, chunk) in words.iter_mut().zip(bytes.chunks_exact(8)) {
            *word = u64::from_le_bytes(chunk.try_into().unwrap());
        }
        words
    }

    #[test]
    fn an_entry_names_what_stands_before_its_first_equals_sign() {
        let cases = [
            ("PATH=/usr/bin:/bin", Some("PATH")),
            ("_=/usr/bin/env", Some("_")),
            ("LC_IDENTIFICATION=C", Some("LC_IDENTIFICATION")),
            ("A=B=C", Some("A")),
            // Exactly eight, exactly 32 bytes: '=' starts the next word.
            ("ABCDEFGH=1", Some("ABCDEFGH")),
            (
                "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345=1",
                Some("ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"),
            ),
            // Bytes with the high bit set are no '='.
            ("\u{e9}T\u{e9}=x", Some("\u{e9}T\u{e9}")),
        ];
        for (entry, name) in cases {
            let expected = name.map(|name| EnvName::new(name).unwrap());
            assert_eq!(EnvName::of_entry(&entry_words(entry)), expected, "{entry}");
        }
        // The empty name is nobody's.
        assert_eq!(
            EnvName::of_entry(&entry_words("=x")),
            Some(EnvName::default())
        );
        for entry in [
            "NOEQUALS",
            "",
            "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456=1",
            "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789=1",
        ] {
            assert_eq!(EnvName::of_entry(&entry_words(entry)), None, "{entry}");
        }
    }

    #[test]
    fn only_names_the_kernel_can_compare_have_keys() {
        assert!(EnvName::new("PATH").is_some());
        assert!(EnvName::new("").is_none());
        assert!(EnvName::new("A=B").is_none());
        assert!(EnvName::new(&"N".repeat(ENV_NAME_BYTES + 1)).is_none());
        assert!(APPROVED_ENV.iter().all(|name| EnvName::new(name).is_some()));
    }

    /// The kernel reads a name into the key as `bpf_probe_read_kernel_str` does: at most the
    /// room less one byte, then NUL, the rest zero.
    #[test]
    fn name_keys_cut_long_names_as_the_kernel_reads_them() {
        let dir = Target::exec(8, 2);
        let key = NameKey::new(dir, b"log");
        assert_eq!(&key.name[..4], b"log\0");
        assert!(key.name[3..].iter().all(|byte| *byte == 0));
        let long = [b'n'; GUARDED_NAME_BYTES + 5];
        let cut = NameKey::new(dir, &long);
        assert_eq!(cut.name[GUARDED_NAME_BYTES - 1], 0);
        assert_eq!(cut, NameKey::new(dir, &long[..GUARDED_NAME_BYTES - 1]));
        assert_ne!(key, NameKey::new(Target::exec(8, 3), b"log"));
    }
}

//! What guest tests run as agents: join a cgroup, then exec; or race several execs at once. A copy
//! of this binary is also the protected target: run with `target`, it says so and exits 0.

use std::{
    ffi::CString,
    path::Path,
    process::{Command, ExitCode},
    sync::{Arc, Barrier},
};

/// Printed by a target that ran; tests look for it.
const RAN: &str = "TARGET RAN";

fn join_cgroup(cgroup: &str) -> Result<(), String> {
    if cgroup == "-" {
        return Ok(());
    }
    let procs = Path::new(cgroup).join("cgroup.procs");
    std::fs::write(&procs, std::process::id().to_string())
        .map_err(|error| format!("join {}: {error}", procs.display()))
}

/// Replaces this process with `program args`; returns only on failure, with the errno.
fn exec(program: &str, args: &[String]) -> i32 {
    let Ok(path) = CString::new(program) else {
        return libc::EINVAL;
    };
    let mut argv: Vec<CString> = vec![path.clone()];
    argv.extend(
        args.iter()
            .filter_map(|arg| CString::new(arg.as_bytes()).ok()),
    );
    let mut pointers: Vec<*const libc::c_char> = argv.iter().map(|arg| arg.as_ptr()).collect();
    pointers.push(std::ptr::null());
    // SAFETY: argv is NUL-terminated C strings ending in a null pointer; envp is ours.
    unsafe {
        libc::execv(path.as_ptr(), pointers.as_ptr());
    }
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Runs `program target` from `threads` threads released together; reports how many ran.
fn race(program: &str, threads: usize) -> String {
    let barrier = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let barrier = barrier.clone();
            let program = program.to_owned();
            std::thread::spawn(move || {
                barrier.wait();
                Command::new(&program).arg("target").output()
            })
        })
        .collect();
    let (mut ran, mut denied, mut other) = (0, 0, 0);
    for handle in handles {
        match handle.join() {
            Ok(Ok(output))
                if output.status.success()
                    && String::from_utf8_lossy(&output.stdout).contains(RAN) =>
            {
                ran += 1
            }
            Ok(Err(error)) if error.raw_os_error() == Some(libc::EPERM) => denied += 1,
            _ => other += 1,
        }
    }
    format!("ran={ran} denied={denied} other={other}")
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["target", ..] => {
            println!("{RAN}");
            ExitCode::SUCCESS
        }
        ["run", cgroup, program, rest @ ..] => {
            if let Err(error) = join_cgroup(cgroup) {
                eprintln!("{error}");
                return ExitCode::from(2);
            }
            let rest: Vec<String> = rest.iter().map(|s| s.to_string()).collect();
            let errno = exec(program, &rest);
            eprintln!("EXEC_ERRNO={errno}");
            ExitCode::from(126)
        }
        ["race", cgroup, threads, program] => {
            if let Err(error) = join_cgroup(cgroup) {
                eprintln!("{error}");
                return ExitCode::from(2);
            }
            let Ok(threads) = threads.parse() else {
                eprintln!("bad thread count {threads}");
                return ExitCode::from(2);
            };
            println!("{}", race(program, threads));
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!(
                "usage: gk-helper target | run CGROUP|- PROGRAM [ARGS...] | race CGROUP THREADS PROGRAM"
            );
            ExitCode::from(2)
        }
    }
}

//! Windows side of running a command (`crate::exec`): every command runs in a Job Object,
//! and the job is the tree that a timeout or cancel kills (`TerminateJobObject`), grandchildren
//! included.
//!
//! A process started normally could start children before it is put in the job, and those
//! would escape. So the child is created suspended, assigned to the job, and only then
//! resumed: everything it starts is in the job from its first instruction. The job is set to
//! kill its processes when its last handle closes, so they die with the agent too (even if the
//! agent crashes); when a command exits normally that setting is lifted first, so what it left
//! running in the background stays, as in a shell.

use std::os::windows::io::{AsRawHandle, FromRawHandle, OwnedHandle};
use std::process::ExitStatus;

use base64::Engine as _;
use tokio::net::windows::named_pipe::{NamedPipeServer, ServerOptions};
use tokio::process::{Child, Command};
use windows_sys::Win32::Foundation::HANDLE;
use windows_sys::Win32::System::JobObjects::{
    AssignProcessToJobObject, CreateJobObjectW, JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE,
    JOBOBJECT_EXTENDED_LIMIT_INFORMATION, JobObjectExtendedLimitInformation,
    SetInformationJobObject, TerminateJobObject,
};
use windows_sys::Win32::System::Threading::{CREATE_NO_WINDOW, CREATE_SUSPENDED};

use crate::exec::{ArgStyle, ExecEnd};

#[link(name = "ntdll")]
unsafe extern "system" {
    /// Resumes every thread of a process (ntdll; not in the Win32 headers). The child's main
    /// thread handle, which `ResumeThread` would need, stays inside std.
    fn NtResumeProcess(process: HANDLE) -> i32;
}

/// Shells a `raw_command` may name; the first is the default (seed 002: PowerShell).
pub const SHELLS: &[&str] = &[
    "powershell",
    "powershell.exe",
    "pwsh",
    "pwsh.exe",
    "cmd",
    "cmd.exe",
];

/// The program and arguments that run `raw` in `shell` (PowerShell when none is named).
///
/// PowerShell gets the command as `-EncodedCommand` (base64 of UTF-16LE), so no quoting of
/// the command line can change what runs; `-NoProfile -NonInteractive` as seed 002 asks.
/// cmd gets `/D /S /C "<raw>"` verbatim: cmd does not split its command line the way the C
/// runtime does, and `/S` makes it take everything between the outer quotes as the command.
pub fn shell_command(
    shell: Option<&str>,
    raw: &str,
) -> Result<(String, Vec<String>, ArgStyle), String> {
    let shell = shell.unwrap_or(SHELLS[0]);
    let lower = shell.to_ascii_lowercase();
    match lower.as_str() {
        "powershell" | "powershell.exe" | "pwsh" | "pwsh.exe" => {
            let program = if lower.starts_with("pwsh") {
                "pwsh.exe"
            } else {
                "powershell.exe"
            };
            let utf16: Vec<u8> = raw.encode_utf16().flat_map(u16::to_le_bytes).collect();
            let encoded = base64::engine::general_purpose::STANDARD.encode(utf16);
            Ok((
                program.into(),
                [
                    "-NoLogo",
                    "-NoProfile",
                    "-NonInteractive",
                    "-ExecutionPolicy",
                    "Bypass",
                    "-EncodedCommand",
                    &encoded,
                ]
                .map(String::from)
                .to_vec(),
                ArgStyle::Separate,
            ))
        }
        "cmd" | "cmd.exe" => Ok((
            "cmd.exe".into(),
            ["/D", "/S", "/C", &format!("\"{raw}\"")]
                .map(String::from)
                .to_vec(),
            ArgStyle::Verbatim,
        )),
        _ => Err(format!(
            "shell `{}` is not one of {SHELLS:?}",
            shell.escape_debug()
        )),
    }
}

/// Separate arguments are quoted the C runtime's way (std does it); verbatim ones are
/// appended to the command line as they are.
pub fn add_args(command: &mut Command, args: &[String], style: ArgStyle) {
    match style {
        ArgStyle::Separate => {
            command.args(args);
        }
        ArgStyle::Verbatim => {
            command.raw_arg(args.join(" "));
        }
    }
}

/// A pipe end the runner reads a command's output from.
pub type Reader = Box<dyn tokio::io::AsyncRead + Unpin + Send>;

/// The command's stdout and stderr, each a named pipe whose server end is ours, opened for
/// overlapped I/O and read through the runtime's completion port. (tokio's own child pipes
/// on Windows read on a blocking thread each: with the agent's two blocking threads, a
/// command writing to stderr while its stdout read waits would stall until its timeout.)
#[derive(Debug)]
pub struct Output {
    stdout: NamedPipeServer,
    stderr: NamedPipeServer,
}

/// A fresh pipe: our overlapped, inbound-only server end, and the child's synchronous write
/// end (which std makes inheritable when it is given to the command).
fn output_pipe() -> std::io::Result<(NamedPipeServer, std::fs::File)> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = format!(r"\\.\pipe\infiniservice-{}-{n}", std::process::id());
    let server = ServerOptions::new()
        .access_inbound(true)
        .access_outbound(false)
        .first_pipe_instance(true)
        .reject_remote_clients(true)
        .max_instances(1)
        .create(&name)?;
    let client = std::fs::OpenOptions::new().write(true).open(&name)?;
    Ok((server, client))
}

impl Output {
    /// Give `command` a pipe for stdout and one for stderr.
    pub fn attach(command: &mut Command) -> std::io::Result<Self> {
        let (stdout, out_client) = output_pipe()?;
        let (stderr, err_client) = output_pipe()?;
        command.stdout(out_client).stderr(err_client);
        Ok(Self { stdout, stderr })
    }

    /// Our ends of the pipes, once the child runs. The child's ends were opened when the
    /// pipes were made, so the connects complete at once; a pipe that cannot connect is read
    /// as empty.
    pub async fn readers(self, _child: &mut Child) -> (Option<Reader>, Option<Reader>) {
        let connect = |server: NamedPipeServer| async move {
            match server.connect().await {
                Ok(()) => Some(Box::new(server) as Reader),
                Err(error) => {
                    tracing::warn!(%error, "a command's output pipe did not connect");
                    None
                }
            }
        };
        (connect(self.stdout).await, connect(self.stderr).await)
    }
}

/// Create the child suspended (it is resumed once it is in its job) and without a console
/// window.
pub fn prepare(command: &mut Command) {
    command.creation_flags(CREATE_SUSPENDED | CREATE_NO_WINDOW);
}

/// The Job Object of a running command. Dropping it kills every process in it.
#[derive(Debug)]
pub struct Tree {
    job: Option<OwnedHandle>,
}

fn kill_on_close(job: &OwnedHandle, kill: bool) -> std::io::Result<()> {
    let mut limits = JOBOBJECT_EXTENDED_LIMIT_INFORMATION::default();
    if kill {
        limits.BasicLimitInformation.LimitFlags = JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE;
    }
    // SAFETY: a valid job handle and a correctly sized limits structure.
    let ok = unsafe {
        SetInformationJobObject(
            job.as_raw_handle(),
            JobObjectExtendedLimitInformation,
            (&limits as *const JOBOBJECT_EXTENDED_LIMIT_INFORMATION).cast(),
            std::mem::size_of::<JOBOBJECT_EXTENDED_LIMIT_INFORMATION>() as u32,
        )
    };
    if ok == 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

impl Tree {
    /// Put a child started after [`prepare`] (suspended) into a new job, then resume it.
    /// On error the child is still suspended; the caller kills it.
    pub fn adopt(child: &Child) -> std::io::Result<Self> {
        let process = child
            .raw_handle()
            .ok_or_else(|| std::io::Error::other("the child has no process handle"))?;
        // SAFETY: no name, default security; the handle is owned below.
        let raw_job = unsafe { CreateJobObjectW(std::ptr::null(), std::ptr::null()) };
        if raw_job.is_null() {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: CreateJobObjectW returned a handle nobody else owns.
        let job = unsafe { OwnedHandle::from_raw_handle(raw_job) };
        kill_on_close(&job, true)?;
        // SAFETY: both handles are valid.
        if unsafe { AssignProcessToJobObject(job.as_raw_handle(), process) } == 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a valid process handle with PROCESS_SUSPEND_RESUME (we created it).
        let status = unsafe { NtResumeProcess(process) };
        if status < 0 {
            return Err(std::io::Error::other(format!(
                "cannot resume the command (NTSTATUS {status:#x})"
            )));
        }
        Ok(Self { job: Some(job) })
    }

    /// Terminate every process in the job.
    pub fn kill(&mut self) {
        if let Some(job) = self.job.take() {
            // SAFETY: a valid job handle.
            unsafe {
                TerminateJobObject(job.as_raw_handle(), 1);
            }
        }
    }

    /// The command exited on its own: what it left in the background keeps running (the job
    /// no longer kills on close), and the job handle is closed.
    pub fn release(&mut self) {
        if let Some(job) = self.job.take()
            && let Err(error) = kill_on_close(&job, false)
        {
            tracing::debug!(%error, "cannot release a command's job; its leftovers end with it");
        }
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
impl Tree {
    /// The processes in the job now.
    fn pids(&self) -> Vec<u32> {
        use windows_sys::Win32::System::JobObjects::{
            JOBOBJECT_BASIC_PROCESS_ID_LIST, JobObjectBasicProcessIdList, QueryInformationJobObject,
        };
        let Some(job) = &self.job else {
            return Vec::new();
        };
        // The header (two u32) then up to 255 ids.
        let mut buffer = [0usize; 256];
        // SAFETY: a valid job handle and a buffer of the size passed.
        let ok = unsafe {
            QueryInformationJobObject(
                job.as_raw_handle(),
                JobObjectBasicProcessIdList,
                buffer.as_mut_ptr().cast(),
                std::mem::size_of_val(&buffer) as u32,
                std::ptr::null_mut(),
            )
        };
        if ok == 0 {
            return Vec::new();
        }
        // SAFETY: the job wrote the list's header at the start of `buffer`.
        let listed = unsafe {
            (*buffer.as_ptr().cast::<JOBOBJECT_BASIC_PROCESS_ID_LIST>()).NumberOfProcessIdsInList
        };
        buffer[1..=(listed as usize).min(255)]
            .iter()
            .map(|&pid| pid as u32)
            .collect()
    }
}

/// How a reaped child ended: Windows has exit codes only (an NTSTATUS such as 0xC0000005
/// reads as a negative code).
pub fn end_of(status: ExitStatus) -> ExecEnd {
    ExecEnd::Exited(status.code().unwrap_or(-1))
}

/// A command that creates the file `path` (tests of what runs and what does not).
#[cfg(test)]
pub fn touch_spec(path: &std::path::Path) -> crate::exec::ExecSpec {
    let (program, args, arg_style) =
        shell_command(Some("cmd"), &format!("type nul > \"{}\"", path.display()))
            .expect("cmd is a shell");
    crate::exec::ExecSpec {
        program,
        args,
        arg_style,
        env: Vec::new(),
        working_dir: None,
        timeout: std::time::Duration::from_secs(10),
        max_output: 1024,
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::exec::{ExecSpec, run};

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    }

    fn cmd(script: &str, timeout: Duration) -> ExecSpec {
        let (program, args, arg_style) = shell_command(Some("cmd"), script).expect("cmd");
        ExecSpec {
            program,
            args,
            arg_style,
            env: Vec::new(),
            working_dir: None,
            timeout,
            max_output: 1024,
        }
    }

    #[test]
    fn exit_code_and_both_streams_are_captured() {
        let out = rt()
            .block_on(run(
                &cmd(
                    "echo out& echo err 1>&2& exit /b 3",
                    Duration::from_secs(30),
                ),
                std::future::pending(),
            ))
            .expect("runs");
        assert_eq!(out.end, ExecEnd::Exited(3));
        assert_eq!(String::from_utf8_lossy(&out.stdout.bytes).trim(), "out");
        assert_eq!(String::from_utf8_lossy(&out.stderr.bytes).trim(), "err");
    }

    #[test]
    fn quotes_and_metacharacters_reach_cmd_unchanged() {
        let out = rt()
            .block_on(run(
                &cmd(r#"echo "a b" ^& c"#, Duration::from_secs(30)),
                std::future::pending(),
            ))
            .expect("runs");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout.bytes).trim(),
            r#""a b" & c"#
        );
    }

    #[test]
    fn a_missing_program_is_a_spawn_error() {
        let spec = ExecSpec {
            program: r"C:\nonexistent\program.exe".into(),
            ..cmd("", Duration::from_secs(1))
        };
        assert!(rt().block_on(run(&spec, std::future::pending())).is_err());
    }

    #[test]
    fn a_timeout_ends_the_command() {
        let started = Instant::now();
        let out = rt()
            .block_on(run(
                &cmd("ping -n 60 127.0.0.1 >nul", Duration::from_secs(2)),
                std::future::pending(),
            ))
            .expect("runs");
        assert_eq!(out.end, ExecEnd::TimedOut);
        assert!(started.elapsed() < Duration::from_secs(20));
    }

    #[test]
    fn killing_the_tree_ends_the_processes_the_command_started() {
        rt().block_on(async {
            // cmd starts a second cmd in the background; both would run for a minute.
            let spec = cmd(
                "start /b cmd /c ping -n 60 127.0.0.1 >nul & ping -n 60 127.0.0.1 >nul",
                Duration::from_secs(60),
            );
            let mut command = Command::new(&spec.program);
            add_args(&mut command, &spec.args, spec.arg_style);
            command.stdin(std::process::Stdio::null());
            prepare(&mut command);
            let mut child = command.spawn().expect("spawn");
            let mut tree = Tree::adopt(&child).expect("in a job");
            let mut members = Vec::new();
            for _ in 0..50 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                members = tree.pids();
                if members.len() >= 4 {
                    break;
                }
            }
            assert!(
                members.len() >= 4,
                "cmd, cmd and two pings expected: {members:?}"
            );
            tree.kill();
            let _ = child.wait().await;
            tokio::time::sleep(Duration::from_millis(300)).await;
            let running = crate::platform::collect::Collector::new(Default::default())
                .process_snapshot(4096)
                .processes;
            let alive: Vec<u32> = members
                .iter()
                .copied()
                .filter(|pid| running.iter().any(|p| p.pid == *pid))
                .collect();
            assert!(alive.is_empty(), "still running after the kill: {alive:?}");
        });
    }

    #[test]
    fn powershell_gets_the_command_encoded_and_other_shells_are_refused() {
        let (program, args, style) = shell_command(None, "Get-Date").expect("default");
        assert_eq!(program, "powershell.exe");
        assert!(args.contains(&"-NonInteractive".to_string()));
        assert!(args.contains(&"-NoProfile".to_string()));
        let encoded = args.last().expect("encoded command");
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .expect("base64");
        let units: Vec<u16> = bytes
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        assert_eq!(String::from_utf16(&units).expect("utf-16"), "Get-Date");
        assert_eq!(style, ArgStyle::Separate);
        assert!(shell_command(Some("bash"), "x").is_err());
    }
}

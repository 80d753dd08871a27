//! The client under a pseudo-terminal, as a person runs it, and what it draws.

use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};

use tokio::process::Child;
use tokio::sync::Notify;
use tokio::time::timeout;

use super::{Lines, WAIT, client_command, wait_exit};

/// A `client` binary running in a pseudo-terminal, as a person would run it: its
/// stdin and stdout are the terminal, its stderr is piped. Killed when dropped.
pub struct PtyClient {
    pub child: Child,
    /// The terminal's master side: keys are written to it.
    master: std::fs::File,
    /// Everything the client drew on the terminal, escape codes included.
    pub screen: Screen,
    pub stderr: Lines,
}

impl PtyClient {
    /// Starts the client with `args` and `env` in a 24×120 terminal.
    pub fn start(args: &[&str], env: &[(&str, &str)]) -> PtyClient {
        use rustix::fs::{Mode, OFlags};
        use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};

        let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)
            .expect("open a pseudo-terminal");
        grantpt(&master).expect("grantpt");
        unlockpt(&master).expect("unlockpt");
        let size = rustix::termios::Winsize {
            ws_row: 24,
            ws_col: 120,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        rustix::termios::tcsetwinsize(&master, size).expect("set the terminal size");
        let name = ptsname(&master, Vec::new()).expect("ptsname");
        let slave = rustix::fs::open(
            name.as_c_str(),
            OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .expect("open the terminal's slave side");
        let slave = std::fs::File::from(slave);

        let mut command = client_command();
        command
            .args(args)
            .env_remove("NO_COLOR")
            .env("TERM", "xterm")
            .envs(env.iter().copied())
            .stdin(slave.try_clone().expect("dup the slave"))
            .stdout(slave)
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        // SAFETY: only async-signal-safe system calls run between fork and exec. A
        // session of its own with this terminal as its controlling terminal, so that
        // the client's `/dev/tty` is this pseudo-terminal, never the one running the tests.
        #[allow(unsafe_code)]
        unsafe {
            command.pre_exec(|| {
                rustix::process::setsid()?;
                let stdin = std::os::fd::BorrowedFd::borrow_raw(0);
                rustix::process::ioctl_tiocsctty(stdin)?;
                Ok(())
            });
        }
        let mut child = command.spawn().expect("spawn the client binary");
        drop(command); // Closes our copies of the slave side, so reads end when the client does.
        let stderr = Lines::follow(child.stderr.take().expect("piped stderr"));
        let master = std::fs::File::from(master);
        let screen = Screen::follow(master.try_clone().expect("dup the master"));
        PtyClient {
            child,
            master,
            screen,
            stderr,
        }
    }

    /// Types `keys` (`\r` is Enter) on the terminal.
    pub fn type_keys(&mut self, keys: &str) {
        use std::io::Write;
        self.master
            .write_all(keys.as_bytes())
            .expect("type on the terminal");
        self.master.flush().expect("flush the terminal");
    }

    /// Whether the terminal is in its normal (canonical, echoing) mode.
    pub fn terminal_is_cooked(&self) -> bool {
        use rustix::termios::LocalModes;
        let termios = rustix::termios::tcgetattr(&self.master).expect("tcgetattr");
        termios
            .local_modes
            .contains(LocalModes::ICANON | LocalModes::ECHO)
    }

    pub async fn wait(&mut self) -> ExitStatus {
        wait_exit(&mut self.child).await
    }
}

/// The bytes a program wrote to a terminal, collected as they come.
#[derive(Clone, Default)]
pub struct Screen {
    bytes: Arc<Mutex<Vec<u8>>>,
    changed: Arc<Notify>,
}

impl Screen {
    fn follow(mut master: std::fs::File) -> Screen {
        use std::io::Read;
        let screen = Screen::default();
        let sink = screen.clone();
        // A blocking thread: reading a pty master ends with EIO once the client exits.
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = master.read(&mut buf) {
                sink.bytes
                    .lock()
                    .expect("screen lock")
                    .extend_from_slice(&buf[..n]);
                sink.changed.notify_waiters();
            }
        });
        screen
    }

    /// Everything drawn so far, as text (escape codes included).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes.lock().expect("screen lock")).into_owned()
    }

    /// Waits until `needle` has been drawn at or after byte `from`; returns the
    /// position just after it.
    pub async fn wait_for_after(&self, from: usize, needle: &str) -> usize {
        let found = timeout(WAIT, async {
            loop {
                let notified = self.changed.notified();
                let text = self.text();
                if let Some(at) = text.get(from..).and_then(|rest| rest.find(needle)) {
                    return from + at + needle.len();
                }
                notified.await;
            }
        })
        .await;
        found.unwrap_or_else(|_| {
            panic!(
                "{needle:?} not drawn after byte {from} within {WAIT:?}; screen: {:?}",
                self.text().get(from..).unwrap_or_default()
            )
        })
    }

    /// Waits until `needle` has been drawn; returns the position just after it.
    pub async fn wait_for(&self, needle: &str) -> usize {
        self.wait_for_after(0, needle).await
    }
}

//! What both binaries offer besides their work: `completions SHELL` and `man`,
//! generated from the binary's own clap definition.

use std::io::{self, Write};

/// The subcommands every binary has. With none, the binary does its work as ever
/// (the flags and a subcommand do not mix).
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Tool {
    /// Print shell completions for this program to stdout (e.g. `completions bash`).
    Completions {
        /// The shell to complete for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print this program's man page (roff) to stdout.
    Man,
}

impl Tool {
    /// Writes what was asked for about `command` (the binary's whole definition) to `out`.
    ///
    /// # Errors
    /// The output's error, when writing fails.
    pub fn write(&self, mut command: clap::Command, out: &mut dyn Write) -> io::Result<()> {
        match self {
            Tool::Completions { shell } => {
                let name = command.get_name().to_owned();
                clap_complete::generate(*shell, &mut command, name, out);
                Ok(())
            }
            Tool::Man => clap_mangen::Man::new(command).render(out),
        }
    }

    /// Runs the tool on stdout for a binary's `main`: exit 0, or 1 with one line
    /// on stderr when stdout cannot be written.
    pub fn run(&self, command: clap::Command) -> std::process::ExitCode {
        let mut out = io::stdout().lock();
        match self.write(command, &mut out).and_then(|()| out.flush()) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: cannot write output: {e}");
                std::process::ExitCode::FAILURE
            }
        }
    }
}

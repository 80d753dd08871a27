//! The commands typed at the terminal (`/quit`, `/help`, `/who`, `//text`) and `/help`'s text.

use crate::protocol;

/// What a line typed at the terminal asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command<'a> {
    /// Send this text.
    Send(&'a str),
    /// Close the connection and exit.
    Quit,
    /// Show the commands.
    Help,
    /// A `/word` that is no command: not sent, so that a typo stays private.
    Unknown(&'a str),
}

/// The commands, as `/help` shows them.
pub const HELP: &str = "commands:
  /who     ask the server who is in the room
  /help    show this list
  /quit    leave (or press Ctrl-D or Ctrl-C)
  //text   send /text as a message
";

/// Reads a line typed at the terminal: `/quit`, `/help`, `/who`, `//text` (sends
/// `/text`), another `/word` (unknown), or text to send as it is.
pub fn command(line: &str) -> Command<'_> {
    if line.starts_with("//") {
        return Command::Send(&line[1..]);
    }
    if !line.starts_with('/') {
        return Command::Send(line);
    }
    match line.split_whitespace().next().unwrap_or(line) {
        "/quit" => Command::Quit,
        "/help" => Command::Help,
        "/who" => Command::Send(protocol::WHO_COMMAND),
        word => Command::Unknown(word),
    }
}

/// The hint shown instead of sending an unknown `/word`.
pub fn unknown_command_hint(word: &str) -> String {
    format!(
        "unknown command {word} (not sent): type /help for the commands, or /{word} to send it as text"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_parsed_and_text_is_sent_as_typed() {
        assert_eq!(command("hello"), Command::Send("hello"));
        assert_eq!(command(" /quit"), Command::Send(" /quit"));
        assert_eq!(command(""), Command::Send(""));
        assert_eq!(command("/quit"), Command::Quit);
        assert_eq!(command("/quit now"), Command::Quit);
        assert_eq!(command("/help"), Command::Help);
        assert_eq!(command("/who"), Command::Send(protocol::WHO_COMMAND));
        assert_eq!(command("/foo bar"), Command::Unknown("/foo"));
        assert_eq!(command("/"), Command::Unknown("/"));
        assert_eq!(command("/quitter"), Command::Unknown("/quitter"));
        assert_eq!(command("//x"), Command::Send("/x"));
        assert_eq!(command("//quit"), Command::Send("/quit"));
        assert!(unknown_command_hint("/foo").contains("//foo"));
    }
}
